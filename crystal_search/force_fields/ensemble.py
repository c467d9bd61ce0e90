"""Committees of force fields: the mean of several models, and of one model under rotations.

A direct force/stress network is not rotation-equivariant; it learnt the 90-degree rotations of
its training data only through augmentation (:mod:`crystal_search.augment`).  Two standard
variance-reduction committees are built here, both ordinary
:class:`~crystal_search.force_fields.base.ForceField` objects (jittable when their members
are), usable by the relaxer, the evaluation and the search:

* :class:`EnsembleForceField`: the mean forces, stress and energy of several force fields (e.g.
  the same config trained with different seeds);
* :class:`RotationAveragedForceField`: the mean of one force field over rotated copies of each
  cell (lattice rows ``L Rᵀ``, fractional positions unchanged), each output rotated back
  (forces ``F' R``, stress ``Rᵀ σ' R``).  The copies go through the force field as one batch of
  ``K * B`` structures, so a relaxation compiles one call, ``K`` times wider.

Forces are eV/Å and stress kBar (tensile positive) as everywhere; a committee's ``overflow`` is
set where any member overflowed, and ``grow()`` grows every member.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from crystal_search.augment import ROTATIONS_90
from crystal_search.crystals import Crystals
from crystal_search.errors import InputError
from crystal_search.force_fields.base import ForceFieldOutput


def _cube_rotations() -> np.ndarray:
  """The 24 proper rotations of the cube, ``[24, 3, 3]``, identity first."""
  out = []
  for perm in itertools.permutations(range(3)):
    for signs in itertools.product((1, -1), repeat=3):
      r = np.zeros((3, 3))
      r[np.arange(3), perm] = signs
      if np.linalg.det(r) > 0:
        out.append(r)
  out.sort(key=lambda r: -np.trace(r))  # identity (trace 3) first
  return np.stack(out)


#: Rotation sets by name, ``[K, 3, 3]`` (column-vector convention, ``r' = R r``):
#: ``quarter``, the identity and the six 90-degree turns of the training augmentation; ``cube``,
#: the 24 proper rotations of the cube.
ROTATION_SETS: dict[str, np.ndarray] = {
  "quarter": np.concatenate([np.eye(3)[None], ROTATIONS_90]),
  "cube": _cube_rotations(),
}


@dataclasses.dataclass(frozen=True, eq=False)
class EnsembleForceField:
  """Mean of several force fields.

  Attributes:
    members: the force fields (all supporting the elements used).
    name: label for reports.
  """

  members: tuple
  name: str = "ensemble"

  def __post_init__(self):
    if not self.members:
      raise InputError("an ensemble needs at least one force field")
    object.__setattr__(self, "members", tuple(self.members))

  @property
  def jittable(self) -> bool:
    return all(getattr(m, "jittable", False) for m in self.members)

  @property
  def elements(self) -> tuple[str, ...] | None:
    """The elements every member supports (None: any)."""
    known = [m.elements for m in self.members if m.elements is not None]
    if not known:
      return None
    return tuple(e for e in known[0] if all(e in other for other in known[1:]))

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    """Mean forces ``[B, N, 3]`` eV/Å, stress ``[B, 3, 3]`` kBar, energy ``[B]`` eV."""
    xp = jnp if self.jittable else np
    outs = [m(crystals) for m in self.members]
    mean = lambda key: sum(xp.asarray(getattr(o, key)) for o in outs) / len(outs)  # noqa: E731
    overflow = outs[0].overflow
    for o in outs[1:]:
      overflow = xp.logical_or(overflow, o.overflow)
    return ForceFieldOutput(
      forces=mean("forces"), stress=mean("stress"), energy=mean("energy"), overflow=overflow
    )

  def grow(self) -> EnsembleForceField:
    return dataclasses.replace(self, members=tuple(m.grow() for m in self.members))


@dataclasses.dataclass(frozen=True, eq=False)
class RotationAveragedForceField:
  """Mean of a jittable force field over rotated copies of each cell.

  Attributes:
    inner: a jittable force field.
    rotations: ``[K, 3, 3]`` proper rotations (a name of :data:`ROTATION_SETS` is accepted).
    name: label for reports.
  """

  inner: object
  rotations: np.ndarray | str = "quarter"
  name: str = "rotation-averaged"

  def __post_init__(self):
    rotations = self.rotations
    if isinstance(rotations, str):
      if rotations not in ROTATION_SETS:
        raise InputError(
          f"rotation set {rotations!r}: unknown (known: {', '.join(sorted(ROTATION_SETS))})"
        )
      rotations = ROTATION_SETS[rotations]
    rotations = np.asarray(rotations, np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
      raise InputError(f"rotations: shape {rotations.shape}, expected [K, 3, 3]")
    eye = np.eye(3)
    ok = np.allclose(rotations @ np.swapaxes(rotations, 1, 2), eye, atol=1e-6)
    if not ok or not np.allclose(np.linalg.det(rotations), 1.0, atol=1e-6):
      raise InputError("rotations: every matrix must be a proper rotation (R Rᵀ = 1, det 1)")
    if not getattr(self.inner, "jittable", False):
      raise InputError(f"{self.inner.name}: rotation averaging needs a jittable force field")
    object.__setattr__(self, "rotations", rotations)

  jittable = True

  @property
  def elements(self) -> tuple[str, ...] | None:
    return self.inner.elements

  @property
  def num_rotations(self) -> int:
    return len(self.rotations)

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    """Mean over the rotations; one call of ``inner`` on ``K * B`` structures."""
    k, b = self.num_rotations, crystals.batch_size
    dtype = crystals.lattice.dtype
    rot = jnp.asarray(self.rotations, dtype)  # [K, 3, 3]
    tile = lambda x: jnp.concatenate([jnp.asarray(x)] * k, axis=0)  # noqa: E731
    lattice = jnp.einsum("bij,klj->kbil", jnp.asarray(crystals.lattice), rot)  # L Rᵀ
    wide = dataclasses.replace(
      crystals,
      positions=tile(crystals.positions),
      lattice=lattice.reshape((k * b, 3, 3)),
      atomic_numbers=tile(crystals.atomic_numbers),
      mask=tile(crystals.mask),
      n_atoms=tile(crystals.n_atoms),
    )
    out = self.inner(wide)
    forces = jnp.asarray(out.forces).reshape((k, b) + out.forces.shape[1:])
    stress = jnp.asarray(out.stress).reshape((k, b, 3, 3))
    forces = jnp.einsum("kbnj,kjl->kbnl", forces, rot)  # F = F' R
    stress = jnp.einsum("kji,kbjl,klm->kbim", rot, stress, rot)  # σ = Rᵀ σ' R
    energy = jnp.asarray(out.energy).reshape((k, b))
    overflow = jnp.any(jnp.asarray(out.overflow).reshape((k, b)), axis=0)
    return ForceFieldOutput(
      forces=jnp.mean(forces, axis=0),
      stress=jnp.mean(stress, axis=0),
      energy=jnp.mean(energy, axis=0),
      overflow=overflow,
    )

  def grow(self) -> RotationAveragedForceField:
    return dataclasses.replace(self, inner=self.inner.grow())


def committee(force_fields: Sequence, *, rotations: str | None = None, name: str | None = None):
  """The mean of ``force_fields`` (one: itself), each averaged over ``rotations`` if given."""
  members = [
    RotationAveragedForceField(ff, rotations, name=f"{ff.name}+{rotations}") if rotations else ff
    for ff in force_fields
  ]
  if len(members) == 1:
    return dataclasses.replace(members[0], name=name) if name else members[0]
  return EnsembleForceField(tuple(members), name=name or "ensemble")
