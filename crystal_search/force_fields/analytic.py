"""Jittable analytic pair potentials (Lennard-Jones, Morse) for tests and examples.

The pair functions are jax-md's (:func:`jax_md.energy.lennard_jones`,
:func:`jax_md.energy.morse`) times jax-md's C^1 switching function
(:func:`jax_md.energy.multiplicative_isotropic_cutoff`, 1 below ``r_onset``,
0 beyond ``r_cutoff``).  The periodic sum is exact for any cell shape: every
pair ``(i, j)`` is summed over the lattice translations ``n`` in the static
range ``[-images, images]^3`` after the fractional difference is wrapped into
``[-0.5, 0.5)``, which finds every image closer than ``r_cutoff`` as long as
``images >= r_cutoff / h_min + 0.5`` (``h_min`` the smallest distance between
opposite cell faces).  A structure that needs more images is flagged in
``ForceFieldOutput.overflow`` and :meth:`PairPotential.grow` adds one, so the
relaxer's overflow retry handles small or sheared cells.

One parameter set is used for every element pair.  Forces and stress come from
autodiff of the energy (:class:`~crystal_search.force_fields.base.EnergyForceField`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import energy as jmd_energy

from crystal_search.crystals import Crystals, cell_heights
from crystal_search.force_fields.base import EnergyForceField, ForceFieldOutput


@dataclasses.dataclass(frozen=True)
class PairPotential:
  """A jittable periodic pair potential ``E = 1/2 sum_{i,j,n} phi(|r_j + n L - r_i|)``.

  Attributes:
    pair_fn: ``phi(r)``: distances ``[...]`` Å -> energies ``[...]`` eV, zero beyond
      ``r_cutoff`` (pure JAX).
    r_cutoff: Å, where ``phi`` reaches zero.
    images: lattice translations ``-images..images`` summed along each axis (static).
    name: label for reports.
    elements: supported element symbols (None: any; every pair uses the same ``phi``).
  """

  pair_fn: Callable[[jax.Array], jax.Array]
  r_cutoff: float
  images: int = 1
  name: str = "pair"
  elements: tuple[str, ...] | None = None
  jittable: bool = True

  def _shifts(self) -> np.ndarray:
    r = range(-self.images, self.images + 1)
    return np.asarray(list(itertools.product(r, r, r)), np.float32)

  def energy(self, crystals: Crystals) -> jax.Array:
    """Total energies ``[B]`` eV of a batch (padding atoms and structures contribute 0)."""
    shifts = jnp.asarray(self._shifts(), crystals.positions.dtype)  # [S, 3]
    n = crystals.max_atoms
    self_pair = jnp.eye(n, dtype=bool)[:, :, None] & jnp.all(shifts == 0, axis=-1)[None, None]

    def one(frac, lattice, mask):
      df = frac[None, :, :] - frac[:, None, :]  # [N, N, 3]: r_j - r_i, fractional
      df = df - jax.lax.stop_gradient(jnp.round(df))
      disp = jnp.einsum("ijsk,kl->ijsl", df[:, :, None, :] + shifts, lattice)  # [N, N, S, 3] Å
      r2 = jnp.sum(disp**2, axis=-1)
      valid = (mask[:, None] & mask[None, :])[:, :, None] & ~self_pair
      valid = valid & (r2 < self.r_cutoff**2)
      r = jnp.sqrt(jnp.where(valid, r2, 1.0))
      return 0.5 * jnp.sum(jnp.where(valid, self.pair_fn(r), 0.0))

    return jax.vmap(one)(crystals.positions, crystals.lattice, crystals.mask)

  def needs_more_images(self, crystals: Crystals) -> jax.Array:
    """``[B]`` bool: True where ``images`` is too small to find every neighbour."""
    h_min = jnp.min(cell_heights(crystals.lattice), axis=-1)
    return (crystals.n_atoms > 0) & (self.images < self.r_cutoff / h_min + 0.5)

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    """Forces ``[B, N, 3]`` eV/Å, stress ``[B, 3, 3]`` kBar, energy ``[B]`` eV, overflow ``[B]``."""
    out = EnergyForceField(self.energy, name=self.name, elements=self.elements)(crystals)
    return out.replace(overflow=self.needs_more_images(crystals))

  def bytes_per_structure(self, n_atoms: int) -> int:
    """Working memory of one structure of ``n_atoms`` slots (bytes): the ``[N, N, S, 3]`` pair
    displacements over ``S = (2 images + 1)^3`` translations, about four live copies under
    autodiff, float32."""
    return 4 * 4 * 3 * int(n_atoms) ** 2 * (2 * self.images + 1) ** 3

  def grow(self) -> PairPotential:
    """A copy that sums one more lattice translation along each axis."""
    return dataclasses.replace(self, images=self.images + 1)


def _cut(fn: Callable, r_onset: float, r_cutoff: float) -> Callable:
  if not 0 < r_onset < r_cutoff:
    raise ValueError(f"need 0 < r_onset < r_cutoff, got {r_onset}, {r_cutoff}")
  return jmd_energy.multiplicative_isotropic_cutoff(fn, r_onset, r_cutoff)


def lennard_jones(
  *,
  sigma: float = 2.0,
  epsilon: float = 0.1,
  r_onset: float | None = None,
  r_cutoff: float | None = None,
  images: int = 1,
  elements: tuple[str, ...] | None = None,
) -> PairPotential:
  """Lennard-Jones ``4 epsilon ((sigma/r)^12 - (sigma/r)^6)`` with jax-md's smooth cutoff.

  Args:
    sigma: Å (jax-md's convention: the pair minimum is at ``2^(1/6) sigma``).
    epsilon: eV, well depth.
    r_onset: Å, start of the switching region (default ``2.0 * sigma``).
    r_cutoff: Å, where the energy reaches zero (default ``2.5 * sigma``).
    images: initial number of lattice translations per axis (grown on overflow).
    elements: supported elements (None: any).
  """
  r_cutoff = 2.5 * sigma if r_cutoff is None else r_cutoff
  r_onset = 2.0 * sigma if r_onset is None else r_onset
  fn = _cut(
    functools.partial(jmd_energy.lennard_jones, sigma=sigma, epsilon=epsilon), r_onset, r_cutoff
  )
  return PairPotential(fn, float(r_cutoff), images, f"LJ(sigma={sigma},eps={epsilon})", elements)


def morse(
  *,
  sigma: float = 2.5,
  epsilon: float = 0.3,
  alpha: float = 1.5,
  r_onset: float | None = None,
  r_cutoff: float | None = None,
  images: int = 1,
  elements: tuple[str, ...] | None = None,
) -> PairPotential:
  """Morse ``epsilon (1 - exp(-alpha (r - sigma)))^2 - epsilon`` with jax-md's smooth cutoff.

  Args:
    sigma: Å, pair minimum.
    epsilon: eV, well depth.
    alpha: 1/Å, range parameter.
    r_onset: Å (default ``sigma + 2.5 / alpha``).
    r_cutoff: Å (default ``sigma + 3.5 / alpha``).
    images: initial number of lattice translations per axis (grown on overflow).
    elements: supported elements (None: any).
  """
  r_cutoff = sigma + 3.5 / alpha if r_cutoff is None else r_cutoff
  r_onset = sigma + 2.5 / alpha if r_onset is None else r_onset
  fn = _cut(
    functools.partial(jmd_energy.morse, sigma=sigma, epsilon=epsilon, alpha=alpha),
    r_onset,
    r_cutoff,
  )
  name = f"Morse(sigma={sigma},eps={epsilon},alpha={alpha})"
  return PairPotential(fn, float(r_cutoff), images, name, elements)
