"""KO on CIFAR-10 from the python batches on your disk (no download).

Expects the folder ``cifar-10-batches-py`` (``data_batch_1`` ..
``data_batch_5``, ``test_batch``) extracted from
https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz; if it is missing
the script says so and stops. Trains a small CNN or a (narrow) ResNet-18
with KO and with Adam from the same initialisation and data order, and
reports validation and test accuracy.

On a CPU, keep it small (``--model cnn``, a few thousand steps, or
``--max-train``); the paper's CIFAR results need a GPU and full epochs.

Usage::

    python examples/cifar10.py --data ~/data/cifar-10-batches-py
    python examples/cifar10.py --data DIR --model resnet18 --width 16
    python examples/cifar10.py --data DIR --quick
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ko_examples import data  # pylint: disable=g-import-not-at-top
from ko_examples import models
from ko_examples import training


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data', default=os.path.expanduser(
      '~/data/cifar-10-batches-py'), help='folder of the python batches')
  p.add_argument('--model', choices=('cnn', 'resnet18'), default='cnn')
  p.add_argument('--width', type=int, default=16,
                 help='ResNet-18 width (64 is the standard model)')
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--batch-size', type=int, default=64)
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--collision-rate', type=float, default=0.1)
  p.add_argument('--optimizers', default='ko_soft,adam')
  p.add_argument('--max-train', type=int, default=None,
                 help='use only the first N training images')
  p.add_argument('--quick', action='store_true',
                 help='a tiny model and 5 steps (a smoke test)')
  args = p.parse_args(argv)
  try:
    ds = data.load_cifar10(args.data, max_train=args.max_train)
  except data.MissingDataError as e:
    raise SystemExit(str(e)) from e
  steps = 5 if args.quick else args.steps
  if args.model == 'cnn':
    model = models.SmallCNN(channels=(8,) if args.quick else (32, 64, 128))
  else:
    model = models.ResNet18(width=4 if args.quick else args.width,
                            stage_sizes=(1, 1, 1, 1) if args.quick else
                            (2, 2, 2, 2))
  print(f'CIFAR-10 from {args.data}: {len(ds.y_train)} train, '
        f'{len(ds.y_val)} val, {len(ds.y_test)} test; model {args.model}')
  return training.fit_each(
      model, ds, args.optimizers.split(','), learning_rate=args.lr,
      collision_rate=args.collision_rate, steps=steps,
      batch_size=args.batch_size)


if __name__ == '__main__':
  main()
