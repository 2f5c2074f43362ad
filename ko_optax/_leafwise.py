"""The skeleton that KO's randomised, leafwise transformations share.

:func:`ko_optax.stochastic_collision` and :func:`ko_optax.thermal_diffusion`
each keep a step count (for their schedule) and a PRNG key, act on some
leaves of the updates, skip all work at a rate of 0 and run a compiled copy
of their work when called outside any trace. The pieces live here, so that
each factory is its state, its ``init`` and a short ``update``.
"""

from __future__ import annotations

from typing import Any, Callable, cast, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ko_optax import _checks


def init_state(state_type: Any, key: Any, params: optax.Params) -> Any:
  """``state_type(count, key)``: a zero count and ``key`` with the tree's
  leaf paths folded in, so transformations on different leaves draw
  different numbers."""
  return state_type(
      count=jnp.zeros([], jnp.int32),
      key=_checks.tree_key(_checks.canonicalize_key(key), params))


def transformation(
    state_type: Any,
    key: Any,
    step: Callable[[optax.Updates, Any, optax.Params | None, jax.Array],
                   optax.Updates],
) -> optax.GradientTransformationExtraArgs:
  """An optax transformation whose state is ``state_type(count, key)``.

  ``step(updates, state, params, step_key)`` is the transformation's own
  work; each update draws it a fresh ``step_key`` and advances the count
  and the key, as optax.add_noise does.
  """

  def init_fn(params: optax.Params) -> Any:
    return init_state(state_type, key, params)

  def update_fn(
      updates: optax.Updates,
      state: optax.OptState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, Any]:
    del extra_args
    own: Any = state  # a state_type, as init_fn returned
    next_key, step_key = jax.random.split(own.key)
    return step(updates, own, params, step_key), next_state(own, next_key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def next_state(state: Any, next_key: jax.Array) -> Any:
  """``state`` one step on: the count incremented, the next key."""
  # safe_increment is annotated ArrayLike; it returns an array for one.
  return type(state)(
      count=cast(chex.Array, optax.safe_increment(state.count)),
      key=next_key)


def scheduled(name: str, value: optax.ScalarOrSchedule, count: Any) -> Any:
  """The value of a float or schedule at step ``count``, checked."""
  at_count = value(count) if callable(value) else value
  _checks.check_scalar(name, at_count, schedule=False)
  return at_count


class Leaves(NamedTuple):
  """The leaves of a tree, and which of them a transformation acts on."""
  leaves: list[Any]
  treedef: Any
  paths: list[str]
  active: list[int]

  @classmethod
  def of(cls, tree: Any, acts_on: list[Any]) -> Leaves:
    """``acts_on``: one entry per leaf, truthy where the step acts."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return cls([leaf for _, leaf in with_path], treedef,
               [jax.tree_util.keystr(path) for path, _ in with_path],
               [i for i, on in enumerate(acts_on) if on])

  def selected(self, tree: Any = None) -> list[Any]:
    """The active leaves of the tree (or of ``tree``, of the same
    structure)."""
    leaves = self.leaves if tree is None else self.treedef.flatten_up_to(tree)
    return [leaves[i] for i in self.active]

  def splice(self, new: list[Any]) -> Any:
    """The tree with its active leaves replaced by ``new``."""
    leaves = list(self.leaves)
    for i, leaf in zip(self.active, new):
      leaves[i] = leaf
    return jax.tree.unflatten(self.treedef, leaves)


def unless_zero(rate: Any, run: Callable[[Any], Any], identity: Any) -> Any:
  """``run(rate)``, or ``identity`` (bit for bit) when the rate is 0.

  A concrete rate decides in Python; a traced one (a schedule,
  ``inject_hyperparams``) through ``lax.cond``. NaN != 0: a bad rate runs.
  """
  if _checks.is_concrete(rate):
    return run(rate) if np.any(np.asarray(rate) != 0) else identity
  return jax.lax.cond(jnp.asarray(rate) != 0, run, lambda _: identity, rate)


def compiled_when_eager(fn: Callable[..., Any],
                        static_argnames: tuple[str, ...] = ()
                        ) -> Callable[..., Any]:
  """``fn``, run as one compiled program when called outside any trace.

  Un-jitted, ``tx.update`` would run its work operation by operation, and
  each of hundreds of operations compiles on first use. Called with no
  traced argument this runs ``jax.jit(fn)`` (one compile per tree layout
  and setting, cached by jax); under the caller's jit, vmap or grad ``fn``
  is traced into the caller's program, unchanged.
  """
  compiled = jax.jit(fn, static_argnames=static_argnames)

  def call(*args: Any, **kwargs: Any) -> Any:
    traced = _checks.is_traced(
        args, [v for k, v in kwargs.items() if k not in static_argnames])
    return (fn if traced else compiled)(*args, **kwargs)

  return call
