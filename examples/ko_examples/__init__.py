"""Shared code of the ko_optax examples: data loaders, Flax models, training.

* :mod:`ko_examples.data`: MNIST-1D and 8x8 digits (generated or shipped
  offline), CIFAR-10 python batches and folder-per-class text (read from
  disk, never downloaded), all as a :class:`ko_examples.data.Dataset`.
* :mod:`ko_examples.models`: small ``flax.linen`` models (MLP, 1-D CNN,
  digits CNN, ResNet-18, text classifiers) whose ``apply`` is a pure
  function, easy to ``vmap`` over seeds.
* :mod:`ko_examples.training`: optimizer factories and a jitted, seed-vmapped
  training loop shared by ``examples/compare.py`` and the benchmarks.
* :mod:`ko_examples.timing`: medians of interleaved timings, the machine's
  description and JSON output, shared by the benchmarks.
"""
