"""The advection step of KO: the base optimizer turns forces into velocities.

In the Boltzmann split step, free streaming moves each particle along its
velocity. KO's collisions and diffusion act on the force (the gradient); the
base optimizer then turns that force into the velocity the particle streams
with: Adam's moment scaling, SGD's momentum, or any optax scaling
transformation. The learning rate (the time step) is applied afterwards by
``optax.scale_by_learning_rate``, so this step is exactly the base optimizer
without its learning rate.
"""

from __future__ import annotations

from typing import Any

import optax

from ko_optax import _checks

BASES = ('adam', 'sgd')


def kinetic_advection(
    base: str | optax.GradientTransformation = 'adam',
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    momentum: float | None = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """KO's advection step: the base optimizer's scaling, without learning rate.

  Args:
    base: ``'adam'`` (``optax.scale_by_adam``), ``'sgd'`` (``optax.trace``
      momentum, or the identity when ``momentum`` is None), or any
      ``optax.GradientTransformation`` to use as it is (e.g.
      ``optax.scale_by_lion()`` or ``optax.contrib.scale_by_muon()``).
    b1, b2, eps, eps_root, mu_dtype: Adam's arguments, as in ``optax.adam``.
    momentum: SGD's momentum decay (None: plain SGD), as in ``optax.sgd``.
    nesterov: Nesterov momentum, for both Adam and SGD, as in optax.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> tx = ko_optax.kinetic_advection('sgd', momentum=0.9)
    >>> g = jnp.ones(3)
    >>> v, state = tx.update(g, tx.init(g))
    >>> v, state = tx.update(g, state)
    >>> v.tolist()   # g + 0.9 g
    [1.899999976158142, 1.899999976158142, 1.899999976158142]

  References:
    Kingma, Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  if isinstance(base, optax.GradientTransformation):
    return base
  if not isinstance(base, str):
    raise TypeError(
        "base must be 'adam', 'sgd' or an optax.GradientTransformation, got "
        f'{base!r}.'
    )
  _checks.check_choice('base', base, BASES)
  if base == 'adam':
    return optax.scale_by_adam(
        b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
        nesterov=nesterov)
  if momentum is None:
    return optax.identity()
  _checks.check_non_negative('momentum', momentum)
  return optax.trace(decay=momentum, nesterov=nesterov)
