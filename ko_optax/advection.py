"""The advection step of KO: the base optimizer turns forces into velocities.

In the Boltzmann split step, free streaming moves each particle along its
velocity. KO's collisions and diffusion act on the force (the gradient); the
base optimizer then turns that force into the velocity the particle streams
with: Adam's moment scaling, SGD's momentum, or any optax scaling
transformation. The learning rate (the time step) is applied afterwards by
``optax.scale_by_learning_rate``, so this step is exactly the base optimizer
without its learning rate.

The paper collides the force. A particle's velocity, though, persists
between steps: in the base optimizer it is the momentum buffer (SGD's trace,
Adam's first moment). ``kinetic_advection(..., collision=...)`` collides that
buffer instead, each step, and keeps the collided value in the state, so a
collision's effect carries into the next steps (METHOD.md's third open
question; ``ko(..., collide_on='velocity')``).
"""

from __future__ import annotations

from typing import Any, cast, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ko_optax import _checks

BASES = ('adam', 'sgd')


class CollidedAdvectionState(NamedTuple):
  """State of :func:`kinetic_advection` with a velocity collision.

  Attributes:
    base: the base optimizer's state (``optax.ScaleByAdamState`` or
      ``optax.TraceState``), whose momentum buffer holds collided velocities.
    collision: the collision's state (count and key).
  """
  base: Any
  collision: Any


def _collided_adam(
    collision: optax.GradientTransformation,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    mu_dtype: Any,
    nesterov: bool,
) -> optax.GradientTransformationExtraArgs:
  """``optax.scale_by_adam`` whose first moment collides every step."""
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                             mu_dtype=mu_dtype, nesterov=nesterov)
  mu_dtype = (None if mu_dtype is None
              else jax.dtypes.canonicalize_dtype(mu_dtype))

  def init_fn(params: optax.Params) -> CollidedAdvectionState:
    return CollidedAdvectionState(adam.init(params), collision.init(params))

  def update_fn(
      updates: optax.Updates,
      state: optax.OptState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, CollidedAdvectionState]:
    # optax.scale_by_adam's update, line for line, with the collision of the
    # first moment (the particles' velocity) right after its update.
    state = cast(CollidedAdvectionState, state)  # what init_fn returned
    base = state.base
    mu = optax.tree.update_moment(updates, base.mu, b1, 1)
    mu, collision_state = collision.update(mu, state.collision, params,
                                           **extra_args)
    nu = optax.tree.update_moment_per_elem_norm(updates, base.nu, b2, 2)
    count_inc = optax.safe_increment(base.count)
    if nesterov:
      mu_hat = jax.tree.map(
          lambda m, g: b1 * m + (1 - b1) * g,
          optax.tree.bias_correction(mu, b1,
                                     optax.safe_increment(count_inc)),
          optax.tree.bias_correction(updates, b1, count_inc),
      )
    else:
      mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
    nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
    updates = jax.tree.map(
        lambda m, v: None if m is None else m / (jnp.sqrt(v + eps_root) + eps),
        mu_hat, nu_hat, is_leaf=lambda x: x is None)
    mu = optax.tree.cast(mu, mu_dtype)
    nu = optax.tree.cast_like(nu, base.nu)
    new_base = type(base)(count=count_inc, mu=mu, nu=nu)
    return updates, CollidedAdvectionState(new_base, collision_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _collided_momentum(
    collision: optax.GradientTransformation,
    decay: float,
    nesterov: bool,
) -> optax.GradientTransformationExtraArgs:
  """``optax.trace`` (SGD momentum) whose trace collides every step."""
  trace = optax.trace(decay=decay, nesterov=nesterov)

  def init_fn(params: optax.Params) -> CollidedAdvectionState:
    return CollidedAdvectionState(trace.init(params), collision.init(params))

  def update_fn(
      updates: optax.Updates,
      state: optax.OptState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, CollidedAdvectionState]:
    state = cast(CollidedAdvectionState, state)  # what init_fn returned
    f = lambda g, t: g + decay * t
    new_trace = jax.tree.map(f, updates, state.base.trace)
    new_trace, collision_state = collision.update(
        new_trace, state.collision, params, **extra_args)
    updates = jax.tree.map(f, updates, new_trace) if nesterov else new_trace
    return updates, CollidedAdvectionState(
        optax.TraceState(trace=new_trace), collision_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
    collision: optax.GradientTransformation | None = None,
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
    collision: None, or a collision (e.g.
      ``ko_optax.stochastic_collision(0.1, mode='hard')``) applied to the
      base's momentum buffer, the particles' velocity, every step; the
      collided buffer is kept in the state. Needs ``base='adam'`` or
      ``base='sgd'`` with ``momentum``; ``update`` then needs params.

  Returns:
    An ``optax.GradientTransformation`` (``GradientTransformationExtraArgs``
    with a collision).

  Example:
    >>> import jax.numpy as jnp, ko_optax
    >>> tx = ko_optax.kinetic_advection('sgd', momentum=0.9)
    >>> g = jnp.ones(3)
    >>> v, state = tx.update(g, tx.init(g))
    >>> v, state = tx.update(g, state)
    >>> v.tolist()   # g + 0.9 g
    [1.899999976158142, 1.899999976158142, 1.899999976158142]

    Collide the momentum buffer (the particles' velocity) instead:

    >>> import jax
    >>> params = {'w': jax.random.normal(jax.random.key(0), (4, 6))}
    >>> tx = ko_optax.kinetic_advection(
    ...     'sgd', collision=ko_optax.stochastic_collision(0.5, mode='hard'))
    >>> v, state = tx.update(params, tx.init(params), params)
    >>> # hard collisions conserve the layer's total momentum
    >>> bool(jnp.allclose(v['w'].sum(-1), params['w'].sum(-1), atol=1e-5))
    True

  References:
    Kingma, Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  if collision is not None:
    if not isinstance(collision, optax.GradientTransformation):
      raise TypeError(
          'collision must be an optax.GradientTransformation such as '
          f'ko_optax.stochastic_collision(0.1), got {collision!r}.')
    if base == 'adam':
      return _collided_adam(collision, b1, b2, eps, eps_root, mu_dtype,
                            nesterov)
    if base == 'sgd' and momentum is not None:
      _checks.check_non_negative('momentum', momentum)
      return _collided_momentum(collision, momentum, nesterov)
    raise ValueError(
        "A velocity collision needs a base with a momentum buffer: base='adam'"
        f" or base='sgd' with momentum, got base={base!r}, "
        f'momentum={momentum!r}. Collide the gradient instead (collision '
        "before the base, ko(..., collide_on='gradient')).")
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
