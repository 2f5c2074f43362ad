"""The collision step of KO: similar neurons exchange momentum.

A Boltzmann-equation solver splits each time step into free streaming and
collisions. In KO a particle is an output neuron of a layer: its position
``w_i`` is the neuron's weight vector and its velocity ``g_i`` the neuron's
gradient (see :mod:`ko_optax.particles` for which axes index the neurons).
Collisions act on the gradient before the base optimizer sees it and push
apart neurons that are close and move alike, which keeps them from
condensing onto a few directions.

Two collision operators act on ``(D, N)`` particle matrices whose columns
are the particles: the deterministic mean-field ``soft`` one
(:mod:`ko_optax.collision.soft`, the paper's practical form, O(N^2 D)) and
the Direct Simulation Monte Carlo ``hard`` one
(:mod:`ko_optax.collision.hard`, O(N D)). :mod:`ko_optax.collision.grouping`
collides the leaves of a tree in groups of one shape, and
:mod:`ko_optax.collision.transform` is the optax transformation.

References:
  Feng, Huang, Fu, Wang, Yan, `KO: Kinetics-inspired Neural Optimizer with PDE
  Simulation Approaches <https://arxiv.org/abs/2505.14777>`_, 2025.
  Bird, *Molecular Gas Dynamics and the Direct Simulation of Gas Flows*, 1994.
"""

from ko_optax.collision.hard import hard_collision
from ko_optax.collision.soft import soft_collision
from ko_optax.collision.transform import stochastic_collision
from ko_optax.collision.transform import StochasticCollisionState

__all__ = (
    'StochasticCollisionState',
    'hard_collision',
    'soft_collision',
    'stochastic_collision',
)
