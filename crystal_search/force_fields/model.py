"""Our trained networks as jittable force fields.

* :class:`ModelForceField`: the force/stress network (energy NaN).
* :class:`EnergyModelForceField`: the energy baseline; forces and stress by
  central finite differences (the paper's way) or by autodiff.

Both are frozen dataclasses holding the config, the variables and the static
neighbour ``capacity``.  ``__call__`` goes through a module-level ``jax.jit``
that takes the variables as an *argument* (config and capacity static), so a
new instance with the same config and shapes reuses the compiled code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crystal_search.crystals import Crystals, bucket_size, from_structures
from crystal_search.errors import InputError
from crystal_search.force_fields.base import ForceFieldOutput
from crystal_search.models import config as config_lib
from crystal_search.models import force_stress

#: Default edges per structure: ~64 neighbours per atom slot is generous for Li–Si densities
#: (about 30 atoms lie within 5 Å); overflow grows it.
DEFAULT_EDGES_PER_ATOM = 64


def default_capacity(max_atoms: int) -> int:
  """A starting edge capacity for ``max_atoms`` slots."""
  return DEFAULT_EDGES_PER_ATOM * max_atoms


#: :func:`capacity_for` sizes the edge capacity to this margin over the largest edge count of the
#: structures it is given (cells that shrink while relaxing gain edges), rounded up to the grid
#: ``CAPACITY_QUANTUM * 2**(k/4)``: the same few shapes recur between calls (fewer compilations).
CAPACITY_MARGIN = 1.35
CAPACITY_QUANTUM = 128


def capacity_for(crystals: Crystals, cutoff: float, *, margin: float = CAPACITY_MARGIN) -> int:
  """Edges per structure for a batch of ``crystals``: ``margin`` times the largest directed edge
  count within ``cutoff`` Å (periodic images included), rounded up to the grid
  ``CAPACITY_QUANTUM * 2**(k/4)`` (k >= 0) and to a multiple of 8."""
  from crystal_search import graphs

  need = margin * graphs.required_capacity(crystals, cutoff) / CAPACITY_QUANTUM
  k = max(0, math.ceil(4 * math.log2(max(need, 1.0)) - 1e-9))
  return int(8 * math.ceil(CAPACITY_QUANTUM * 2 ** (k / 4) / 8))


#: Force fields made by ``sized_for`` and ``grow``, kept so that the same weights, config and
#: capacity give the same object (the relaxer caches its compiled programs per force-field
#: object: a new object for the same shapes would compile again).
_VARIANTS: dict = {}


def _variant(force_field, *, capacity: int, config=None):
  """``force_field`` with another ``capacity`` (and ``config``), one object per combination."""
  config = force_field.config if config is None else config
  key = (type(force_field), id(force_field.variables), force_field.name, config, capacity)
  key += (getattr(force_field, "derivative", None),)
  if key not in _VARIANTS:
    if len(_VARIANTS) >= 128:
      _VARIANTS.pop(next(iter(_VARIANTS)))
    made = dataclasses.replace(force_field, capacity=capacity, config=config)
    _VARIANTS[key] = (made, force_field.variables)  # the variables stay alive: ids stay unique
  return _VARIANTS[key][0]


_IMAGE_CONFIGS: dict = {}


def _with_images(config: ml_collections.FrozenConfigDict, images: int):
  """``config`` with ``max_images = images``, one object per pair (its hash keys compilations)."""
  if int(config.max_images) >= images:
    return config
  key = (config, images)
  if key not in _IMAGE_CONFIGS:
    c = ml_collections.ConfigDict(config.to_dict())
    c.max_images = int(images)
    _IMAGE_CONFIGS[key] = ml_collections.FrozenConfigDict(c)
  return _IMAGE_CONFIGS[key]


def _sized(force_field, crystals: Crystals):
  """The edge capacity of :func:`capacity_for`, and a periodic-image range one wider than the
  thinnest cell of ``crystals`` needs (up to :data:`MAX_GROWN_IMAGES`; cells thin out as they
  relax), so that neither overflows at once."""
  from crystal_search import graphs

  cutoff = float(force_field.config.cutoff)
  images = min(MAX_GROWN_IMAGES, graphs.required_images(crystals, cutoff) + 1)
  return _variant(
    force_field,
    capacity=capacity_for(crystals, cutoff),
    config=_with_images(force_field.config, images),
  )


@functools.partial(jax.jit, static_argnames=("config", "capacity"))
def _force_stress_call(config, variables, crystals, capacity):
  pred = force_stress.apply(config, variables, crystals, capacity=capacity)
  energy = jnp.full(crystals.n_atoms.shape, jnp.nan, pred.forces.dtype)
  return ForceFieldOutput(
    forces=pred.forces, stress=pred.stress, energy=energy, overflow=pred.overflow
  )


#: ``grow()`` widens the periodic-image range up to this half-width (cells thicker
#: than ``cutoff / 3.5`` = 1.14 Å at the default cutoff).
MAX_GROWN_IMAGES = 3


def _grown_config(config: ml_collections.FrozenConfigDict) -> ml_collections.FrozenConfigDict:
  """The overflow flag does not say whether edges or images ran out: widen both (images capped)."""
  if int(config.max_images) >= MAX_GROWN_IMAGES:
    return config
  # A copy through to_dict(): setting a field on ``as_configdict()`` would also change the frozen
  # original's hash (shared field references), so every cache keyed by it would miss.
  c = ml_collections.ConfigDict(config.to_dict())
  c.max_images = int(c.max_images) + 1
  return ml_collections.FrozenConfigDict(c)


@dataclasses.dataclass(frozen=True)
class ModelForceField:
  """The force/stress network as a :class:`~crystal_search.force_fields.base.ForceField`.

  Attributes:
    config: model config (frozen, hashable).
    variables: ``{'params', 'normalization'}``.
    capacity: neighbour edges per structure (static); ``grow()`` doubles it.
    name: label for reports.
  """

  config: ml_collections.FrozenConfigDict
  variables: Any
  capacity: int = 2048
  name: str = "gnn-force-stress"
  jittable: bool = True

  def __post_init__(self):
    object.__setattr__(self, "config", config_lib.frozen(self.config))

  @property
  def elements(self) -> tuple[str, ...]:
    return tuple(self.config.elements)

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    """Forces ``[B, N, 3]`` eV/Å, stress ``[B, 3, 3]`` kBar, energy NaN, overflow ``[B]``."""
    return _force_stress_call(self.config, self.variables, crystals, self.capacity)

  def grow(self) -> ModelForceField:
    """Double the edge capacity; widen the image range by one up to :data:`MAX_GROWN_IMAGES`."""
    return _variant(self, capacity=2 * self.capacity, config=_grown_config(self.config))

  def sized_for(self, crystals: Crystals) -> ModelForceField:
    """This network with the edge capacity :func:`capacity_for` the structures ``crystals``
    (the relaxer sizes each atom-count bucket so; an overflow later still grows it)."""
    return _sized(self, crystals)


@functools.partial(jax.jit, static_argnames=("config", "capacity", "derivative"))
def _energy_call(config, variables, crystals, capacity, derivative):
  from crystal_search.models import energy as energy_model

  energy, forces, stress, overflow = energy_model.energy_forces_stress(
    config, variables, crystals, capacity=capacity, derivative=derivative
  )
  return ForceFieldOutput(forces=forces, stress=stress, energy=energy, overflow=overflow)


@dataclasses.dataclass(frozen=True)
class EnergyModelForceField:
  """The energy baseline as a force field.

  Attributes:
    config: model config (frozen).
    variables: ``{'params', 'normalization'}``.
    capacity: neighbour edges per structure (static).
    derivative: ``'fd'`` (central finite differences, steps from
      ``config.energy``) or ``'autodiff'``; None takes ``config.energy.derivative``.
  """

  config: ml_collections.FrozenConfigDict
  variables: Any
  capacity: int = 2048
  derivative: str | None = None
  name: str = "gnn-energy"
  jittable: bool = True

  def __post_init__(self):
    object.__setattr__(self, "config", config_lib.frozen(self.config))
    if self.derivative is None:
      object.__setattr__(self, "derivative", self.config.energy.derivative)
    if self.derivative not in config_lib.DERIVATIVES:
      raise InputError(f"derivative {self.derivative!r}: expected one of {config_lib.DERIVATIVES}")

  @property
  def elements(self) -> tuple[str, ...]:
    return tuple(self.config.elements)

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    """Energy ``[B]`` eV, forces ``[B, N, 3]`` eV/Å, stress ``[B, 3, 3]`` kBar, overflow ``[B]``."""
    return _energy_call(self.config, self.variables, crystals, self.capacity, self.derivative)

  def energy(self, crystals: Crystals) -> tuple[jax.Array, jax.Array]:
    """Energies ``[B]`` eV per cell and overflow ``[B]`` (no derivatives)."""
    return _energy_only(self.config, self.variables, crystals, self.capacity)

  def grow(self) -> EnergyModelForceField:
    """Double the edge capacity; widen the image range by one up to :data:`MAX_GROWN_IMAGES`."""
    return _variant(self, capacity=2 * self.capacity, config=_grown_config(self.config))

  def sized_for(self, crystals: Crystals) -> EnergyModelForceField:
    """This network with the edge capacity :func:`capacity_for` the structures ``crystals``."""
    return _sized(self, crystals)


@functools.partial(jax.jit, static_argnames=("config", "capacity"))
def _energy_only(config, variables, crystals, capacity):
  from crystal_search.models import energy as energy_model

  pred = energy_model.apply(config, variables, crystals, capacity=capacity)
  return pred.energy, pred.overflow


def from_directory(
  path: str, *, capacity: int | None = None, derivative: str | None = None
) -> ModelForceField | EnergyModelForceField:
  """A force field from a model saved with :func:`crystal_search.models.io.save_model`.

  Args:
    path: model directory.
    capacity: edges per structure; default :func:`default_capacity` of 40 slots.
    derivative: for energy models, ``'fd'`` or ``'autodiff'`` (default from the config).
  """
  from crystal_search.models import io as model_io

  kind, config, variables, _ = model_io.load_model(path)
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  capacity = capacity or default_capacity(40)
  if kind == "force_stress":
    return ModelForceField(config, variables, capacity)
  return EnergyModelForceField(config, variables, capacity, derivative)


def energies_per_atom(
  force_field: EnergyModelForceField,
  structures: Sequence,
  *,
  batch_size: int = 16,
) -> np.ndarray:
  """Energies per atom ``[S]`` (eV/atom) of pymatgen structures under an energy model.

  Structures are batched by atom-count bucket; the capacity grows on overflow.
  """
  if not isinstance(force_field, EnergyModelForceField):
    raise InputError("energies need an energy model (this one predicts forces and stress only)")
  from crystal_search.models.megnet import check_elements

  check_elements(force_field.config, structures)
  out = np.full(len(structures), np.nan)
  sizes = np.array([bucket_size(len(s)) for s in structures])
  ff = force_field
  for bucket in sorted(set(sizes.tolist())):
    idx = np.flatnonzero(sizes == bucket)
    for k in range(0, len(idx), batch_size):
      chunk = idx[k : k + batch_size]
      batch = from_structures(
        [structures[i] for i in chunk], max_atoms=bucket, batch_size=batch_size
      )
      for _ in range(8):
        energy, overflow = ff.energy(batch)
        if not np.any(np.asarray(overflow)):
          break
        ff = ff.grow()
      else:
        raise RuntimeError("neighbour capacity keeps overflowing")
      out[chunk] = np.asarray(energy)[: len(chunk)] / np.array([len(structures[i]) for i in chunk])
  return out
