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
collision's effect carries into the next steps (an open question the
paper leaves; ``ko(..., collide_on='velocity')``).
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
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """``optax.trace`` (SGD momentum) whose trace collides every step."""
  trace = optax.trace(decay=decay, nesterov=nesterov,
                      accumulator_dtype=accumulator_dtype)
  accumulator_dtype = (None if accumulator_dtype is None
                       else jax.dtypes.canonicalize_dtype(accumulator_dtype))

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
    new_trace = optax.tree.cast(new_trace, accumulator_dtype)
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
    b1, b2, eps, eps_root, mu_dtype: Adam's arguments, as in ``optax.adam``;
      with ``base='sgd'`` and ``momentum``, ``mu_dtype`` is the dtype of
      the momentum buffer (``optax.trace``'s ``accumulator_dtype``); with a
      base without buffer or a transformation of your own it is rejected.
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

  Raises:
    ValueError: if ``base`` is a complete optimizer, one with its learning
      rate (``optax.adam(1e-3)`` instead of ``optax.scale_by_adam()``):
      its first update of a probe gradient points against the gradient,
      and KO would apply a learning rate twice and ascend. The probe (two
      small eager steps at construction) is skipped for bases that fail on
      it; a base scaled by a positive factor cannot be told from one
      without it.

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
    >>> v, state = jax.jit(tx.update)(params, tx.init(params), params)
    >>> # hard collisions conserve the layer's total momentum
    >>> bool(jnp.allclose(v['w'].sum(-1), params['w'].sum(-1), atol=1e-5))
    True

  References:
    Kingma, Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  for name, value in (('b1', b1), ('b2', b2), ('eps', eps),
                      ('eps_root', eps_root)):
    _checks.check_scalar(name, value, schedule=False)
  _checks.check_scalar('momentum', momentum, schedule=False, optional=True)
  if mu_dtype is not None and not (
      base == 'adam' or (base == 'sgd' and momentum is not None)):
    raise ValueError(
        f'mu_dtype={mu_dtype!r} sets the dtype of a momentum buffer: it '
        "applies to base='adam' and to base='sgd' with momentum, not to "
        f'base={base!r} with momentum={momentum!r}. Set the dtype in your '
        'own base, or pass mu_dtype=None.')
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
      return _collided_momentum(collision, momentum, nesterov, mu_dtype)
    raise ValueError(
        "A velocity collision needs a base with a momentum buffer: base='adam'"
        f" or base='sgd' with momentum, got base={base!r}, "
        f'momentum={momentum!r}. Collide the gradient instead (collision '
        "before the base, ko(..., collide_on='gradient')).")
  if isinstance(base, optax.GradientTransformation):
    _check_no_learning_rate(base)
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
  return optax.trace(decay=momentum, nesterov=nesterov,
                     accumulator_dtype=mu_dtype)


def _check_no_learning_rate(base: optax.GradientTransformation) -> None:
  """Raises ValueError if ``base`` descends: it carries a learning rate.

  A scaling transformation (``optax.scale_by_adam()``) returns a direction
  along the gradient, which KO's ``scale_by_learning_rate`` turns into a
  descent step; a whole optimizer (``optax.adam(1e-3)``) has already done
  that, and its first update points against the gradient. Best effort: a
  base that fails on the probe is not checked.
  """
  try:
    with jax.ensure_compile_time_eval():
      probe = jnp.array([1.0, -2.0, 3.0], jnp.float32)
      step, _ = base.update(probe, base.init(probe), probe)
      descends = bool(jnp.vdot(jnp.asarray(step), probe) < 0)
  except Exception:  # pylint: disable=broad-except
    return
  if descends:
    raise ValueError(
        'base looks like a complete optimizer: its update of a probe '
        'gradient points against the gradient, i.e. it includes a '
        '(negated) learning rate, and KO applies its own. Pass the '
        'scaling without the learning rate, e.g. optax.scale_by_adam() '
        'instead of optax.adam(1e-3), and give the learning rate to '
        'ko(learning_rate, ...).')
