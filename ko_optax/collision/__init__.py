"""The collision step of KO: similar neurons exchange momentum."""

from ko_optax.collision.transform import hard_collision
from ko_optax.collision.transform import soft_collision
from ko_optax.collision.transform import stochastic_collision
from ko_optax.collision.transform import StochasticCollisionState

__all__ = (
    'StochasticCollisionState',
    'hard_collision',
    'soft_collision',
    'stochastic_collision',
)
