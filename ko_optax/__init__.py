"""ko_optax: the Kinetics-inspired Optimizer (KO) as optax transformations.

KO (Feng et al., arXiv 2505.14777) treats the neurons of a network as the
particles of a gas and takes one time step of the Boltzmann equation per
training step: a collision step (similar neurons exchange momentum), an
optional thermal-diffusion step, an advection step (the base optimizer) and
the learning-rate time step. Each step is an optax transformation; ``ko``
chains them.
"""

from ko_optax.advection import CollidedAdvectionState
from ko_optax.advection import kinetic_advection
from ko_optax.cells import collide_in_cells
from ko_optax.collision import hard_collision
from ko_optax.collision import soft_collision
from ko_optax.collision import stochastic_collision
from ko_optax.collision import StochasticCollisionState
from ko_optax.diagnostics import Condensation
from ko_optax.diagnostics import condensation
from ko_optax.diagnostics import condensation_metrics
from ko_optax.diagnostics import cosine_matrix
from ko_optax.diagnostics import kinetic_temperature
from ko_optax.diffusion import thermal_diffusion
from ko_optax.diffusion import ThermalDiffusionState
from ko_optax.keys import fold_in_keys
from ko_optax.particles import flax_particle_axes
from ko_optax.particles import ParticleSpec
from ko_optax.particles import resolve_particle_axes
from ko_optax.preset import ko
from ko_optax.recipes import ko_gpt
from ko_optax.recipes import last_block_mask

__version__ = '0.1.0'

__all__ = (
    'CollidedAdvectionState',
    'Condensation',
    'ParticleSpec',
    'StochasticCollisionState',
    'ThermalDiffusionState',
    'collide_in_cells',
    'condensation',
    'condensation_metrics',
    'cosine_matrix',
    'flax_particle_axes',
    'fold_in_keys',
    'hard_collision',
    'kinetic_advection',
    'kinetic_temperature',
    'ko',
    'ko_gpt',
    'last_block_mask',
    'resolve_particle_axes',
    'soft_collision',
    'stochastic_collision',
    'thermal_diffusion',
)
