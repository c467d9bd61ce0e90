"""The one interface every force field implements, and an autodiff adapter.

A force field maps a :class:`~crystal_search.crystals.Crystals` batch to a
:class:`ForceFieldOutput`.  Two kinds exist:

* **jittable** force fields (our graph networks, analytic jax-md potentials):
  pure JAX, callable inside ``jit``/``lax.while_loop``;
* **host** force fields (CHGNet, LAMMPS, any ASE calculator): run on the host
  on numpy arrays; the relaxer drives them from a Python loop that calls the
  same jitted update rule.

Units and sign: forces eV/Å, stress kBar with the tensile-positive sign of
:mod:`crystal_search.units`, energy eV per cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from crystal_search.crystals import Crystals
from crystal_search.units import EV_PER_A3_TO_KBAR


@struct.dataclass
class ForceFieldOutput:
  """What a force field returns for a batch of ``B`` structures with ``N`` atom slots.

  Attributes:
    forces: ``[B, N, 3]`` eV/Å, Cartesian, zero on padding atoms.
    stress: ``[B, 3, 3]`` kBar, tensile positive (``(1/V) dE/dstrain``).
    energy: ``[B]`` eV per cell; NaN where the force field gives no energy.
    overflow: ``[B]`` bool, True where the force field's neighbour capacity was
      too small (its outputs are then invalid and the caller must grow the
      capacity and recompute).
  """

  forces: jax.Array
  stress: jax.Array
  energy: jax.Array
  overflow: jax.Array


@runtime_checkable
class ForceField(Protocol):
  """A callable from a batch of crystals to forces, stress and (maybe) energy.

  Attributes:
    jittable: True when ``__call__`` is pure JAX and may be traced.
    elements: element symbols the force field supports, or None for any.
    name: short human-readable name (used in reports).
  """

  jittable: bool
  elements: tuple[str, ...] | None
  name: str

  def __call__(self, crystals: Crystals) -> ForceFieldOutput: ...

  def grow(self) -> ForceField:
    """A copy with a larger neighbour capacity (called after an overflow)."""
    ...


def cartesian_gradients(
  energy_fn: Callable[[Crystals], jax.Array], crystals: Crystals
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Energy, forces and stress of a differentiable energy function, by autodiff.

  Args:
    energy_fn: maps a batch to energies ``[B]`` in eV (pure JAX).
    crystals: the batch.

  Returns:
    ``(energy [B] eV, forces [B, N, 3] eV/Å, stress [B, 3, 3] kBar)`` where
    ``forces = -dE/dr`` and ``stress = (1/V) dE/dstrain`` (symmetric strain
    applied to the lattice rows: ``L' = L (1 + strain)``, fractional coordinates
    fixed).
  """
  eye = jnp.eye(3, dtype=crystals.lattice.dtype)

  def total_energy(cart, strain):
    lattice = crystals.lattice @ (eye + strain)
    inv = jnp.linalg.inv(crystals.lattice)
    frac = jnp.einsum("bni,bij->bnj", cart, inv)
    e = energy_fn(dataclasses.replace(crystals, positions=frac, lattice=lattice))
    return jnp.sum(e), e

  cart = crystals.cartesian()
  strain = jnp.zeros_like(crystals.lattice)
  (_, energy), (d_cart, d_strain) = jax.value_and_grad(total_energy, argnums=(0, 1), has_aux=True)(
    cart, strain
  )
  volume = jnp.abs(crystals.volume())
  forces = -d_cart * crystals.mask[..., None]
  sym = 0.5 * (d_strain + jnp.swapaxes(d_strain, -1, -2))
  stress = sym / volume[:, None, None] * EV_PER_A3_TO_KBAR
  return energy, forces, stress


@dataclasses.dataclass(frozen=True)
class EnergyForceField:
  """A jittable force field from a pure-JAX energy function, forces and stress by autodiff.

  Attributes:
    energy_fn: maps a :class:`Crystals` batch to energies ``[B]`` in eV.
    name: label for reports.
    elements: supported element symbols, or None for any.
  """

  energy_fn: Callable[[Crystals], jax.Array]
  name: str = "energy-autodiff"
  elements: tuple[str, ...] | None = None
  jittable: bool = True

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    energy, forces, stress = cartesian_gradients(self.energy_fn, crystals)
    overflow = jnp.zeros(crystals.batch_size, bool)
    return ForceFieldOutput(forces=forces, stress=stress, energy=energy, overflow=overflow)

  def grow(self) -> EnergyForceField:
    return self
