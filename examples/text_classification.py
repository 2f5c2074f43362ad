"""KO for text classification from a folder-per-class layout (e.g. IMDB).

Expects ``DATA/train/<class>/*.txt`` and ``DATA/test/<class>/*.txt``, as in
IMDB's ``aclImdb`` (https://ai.stanford.edu/~amaas/data/sentiment/, extract
``aclImdb_v1.tar.gz``; its ``train/unsup`` folder is ignored). Nothing is
downloaded; if the folder is missing the script says which layout it wants.
Builds a vocabulary from the training texts, then trains an embedding-bag
classifier or a small Transformer with KO and with Adam.

Usage::

    python examples/text_classification.py --data ~/data/aclImdb
    python examples/text_classification.py --data DIR --model transformer
    python examples/text_classification.py --data DIR --quick
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
  p.add_argument('--data', default=os.path.expanduser('~/data/aclImdb'))
  p.add_argument('--model', choices=('bag', 'transformer'), default='bag')
  p.add_argument('--vocab-size', type=int, default=20000)
  p.add_argument('--max-len', type=int, default=256)
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--steps', type=int, default=2000)
  p.add_argument('--batch-size', type=int, default=64)
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--collision-rate', type=float, default=0.1)
  p.add_argument('--optimizers', default='ko_soft,adam')
  p.add_argument('--quick', action='store_true',
                 help='a tiny model and 5 steps (a smoke test)')
  args = p.parse_args(argv)
  max_len = 32 if args.quick else args.max_len
  try:
    ds, vocab = data.load_text_folder(args.data, vocab_size=args.vocab_size,
                                      max_len=max_len, return_vocab=True)
  except data.MissingDataError as e:
    raise SystemExit(str(e)) from e
  steps = 5 if args.quick else args.steps
  width = 16 if args.quick else args.width
  if args.model == 'bag':
    model = models.TextClassifier(len(vocab), ds.num_classes, embed_dim=width,
                                  hidden=width)
  else:
    model = models.SmallTransformer(len(vocab), ds.num_classes, width=width,
                                    depth=1 if args.quick else 2,
                                    max_len=max_len)
  print(f'{args.data}: {ds.num_classes} classes, {len(ds.y_train)} train, '
        f'{len(ds.y_val)} val, {len(ds.y_test)} test, vocabulary '
        f'{len(vocab)}; model {args.model}')
  return training.fit_each(
      model, ds, args.optimizers.split(','), learning_rate=args.lr,
      collision_rate=args.collision_rate, steps=steps,
      batch_size=args.batch_size)


if __name__ == '__main__':
  main()
