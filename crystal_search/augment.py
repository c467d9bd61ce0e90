"""Data augmentation of labelled crystals (the paper's protocol, section 3.3).

Every epoch, 50 % of the training structures are rotated by 90 degrees about a
random Cartesian axis and 30 % have Gaussian noise added to their Cartesian
positions and lattice vectors.  The two choices are independent.

* **Rotation** by a proper rotation ``R`` (``[3, 3]``, column-vector
  convention ``r' = R r``) moves every Cartesian vector, so the labels move
  with it: lattice rows ``L' = L Rᵀ`` (fractional coordinates unchanged, hence
  Cartesian positions ``r' = r Rᵀ``), forces ``F' = F Rᵀ``, stress
  ``σ' = R σ Rᵀ``; energies are invariant.
* **Noise** of standard deviation ``noise_std`` Å is added independently to every
  Cartesian coordinate of every real atom and to every component of the three
  lattice vectors; fractional coordinates are recomputed from the noisy
  Cartesian positions in the noisy cell.  The labels are left unchanged (the
  paper's regulariser: the model learns that a small displacement barely
  changes forces and stress).

Everything here is numpy on host arrays with an explicit
``numpy.random.Generator``: the training loop derives the generator from
``(seed, epoch, batch)`` so that a resumed run sees the same augmented data as
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from crystal_search.crystals import Crystals

#: The six 90-degree rotations about ±x, ±y, ±z, ``[6, 3, 3]`` (column-vector convention).
ROTATIONS_90: np.ndarray = np.stack(
  [
    np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float64),  # +90 about x
    np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], np.float64),  # +90 about y
    np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float64),  # +90 about z
  ]
  + [
    np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float64),  # -90 about x
    np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], np.float64),  # -90 about y
    np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], np.float64),  # -90 about z
  ]
)


def exact_subset(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
  """A boolean mask ``[n]`` with exactly ``round(fraction * n)`` True entries, at random."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction {fraction} outside [0, 1]")
  chosen = np.zeros((n,), bool)
  k = int(round(fraction * n))
  chosen[rng.permutation(n)[:k]] = True
  return chosen


def random_rotations(rng: np.random.Generator, n: int, *, fraction: float) -> np.ndarray:
  """Rotation matrices ``[n, 3, 3]``: a random 90-degree rotation for ``fraction`` of them.

  Exactly ``round(fraction * n)`` entries are one of :data:`ROTATIONS_90` (axis
  and sense uniform); the others are the identity.
  """
  rotate = exact_subset(rng, n, fraction)
  which = rng.integers(0, len(ROTATIONS_90), size=n)
  out = np.tile(np.eye(3), (n, 1, 1))
  out[rotate] = ROTATIONS_90[which[rotate]]
  return out


def rotate(
  crystals: Crystals,
  forces: np.ndarray,
  stress: np.ndarray,
  rotations: np.ndarray,
) -> tuple[Crystals, np.ndarray, np.ndarray]:
  """Rotate structures and their labels.

  Args:
    crystals: ``B`` structures (numpy arrays).
    forces: ``[B, N, 3]`` eV/Å, Cartesian.
    stress: ``[B, 3, 3]`` kBar.
    rotations: ``[B, 3, 3]`` proper rotations ``R`` (``r' = R r``).

  Returns:
    ``(crystals, forces, stress)`` with lattice rows ``L Rᵀ`` (fractional
    positions unchanged), forces ``F Rᵀ`` and stress ``R σ Rᵀ``.
  """
  rt = np.swapaxes(rotations, -1, -2)
  lattice = np.einsum("bij,bjk->bik", crystals.lattice, rt).astype(crystals.lattice.dtype)
  new_forces = np.einsum("bnj,bjk->bnk", forces, rt).astype(forces.dtype)
  new_stress = np.einsum("bij,bjk,bkl->bil", rotations, stress, rt).astype(stress.dtype)
  return dataclasses.replace(crystals, lattice=lattice), new_forces, new_stress


def add_noise(
  rng: np.random.Generator,
  crystals: Crystals,
  *,
  std: float,
  where: np.ndarray,
) -> Crystals:
  """Gaussian noise on Cartesian positions and lattice vectors of selected structures.

  Args:
    rng: random generator.
    crystals: ``B`` structures (numpy arrays).
    std: standard deviation of the noise, Å (per Cartesian component).
    where: ``[B]`` bool, the structures to perturb (padding structures and
      padding atoms are never perturbed).

  Returns:
    The perturbed batch; fractional positions are those of the noisy Cartesian
    positions in the noisy cell.
  """
  if std < 0:
    raise ValueError(f"noise std {std} < 0")
  where = np.asarray(where, bool) & (np.asarray(crystals.n_atoms) > 0)
  b, n, _ = crystals.positions.shape
  pos_noise = rng.normal(0.0, std, size=(b, n, 3))
  lat_noise = rng.normal(0.0, std, size=(b, 3, 3))
  if std == 0 or not where.any():
    return crystals
  atom_sel = (where[:, None] & np.asarray(crystals.mask))[..., None]
  lattice = np.asarray(crystals.lattice, np.float64)
  cart = np.einsum("bni,bij->bnj", np.asarray(crystals.positions, np.float64), lattice)
  cart = cart + np.where(atom_sel, pos_noise, 0.0)
  new_lattice = lattice + np.where(where[:, None, None], lat_noise, 0.0)
  frac = np.einsum("bnj,bjk->bnk", cart, np.linalg.inv(new_lattice))
  frac = np.where(atom_sel, frac, np.asarray(crystals.positions))
  return dataclasses.replace(
    crystals,
    positions=frac.astype(crystals.positions.dtype),
    lattice=new_lattice.astype(crystals.lattice.dtype),
  )


@dataclasses.dataclass(frozen=True)
class EpochAugmentation:
  """Per-frame augmentation choices for one epoch.

  Attributes:
    rotations: ``[F, 3, 3]`` rotation of each frame (identity when not rotated).
    noisy: ``[F]`` bool, frames that get positional/lattice noise.
  """

  rotations: np.ndarray
  noisy: np.ndarray


def plan_epoch(
  rng: np.random.Generator,
  num_frames: int,
  *,
  rotate_fraction: float,
  noise_fraction: float,
) -> EpochAugmentation:
  """Choose, for one epoch, which frames are rotated (and how) and which get noise.

  Exactly ``round(rotate_fraction * F)`` frames are rotated and
  ``round(noise_fraction * F)`` are perturbed, chosen independently.
  """
  rotations = random_rotations(rng, num_frames, fraction=rotate_fraction)
  noisy = exact_subset(rng, num_frames, noise_fraction)
  return EpochAugmentation(rotations=rotations, noisy=noisy)


def apply(
  rng: np.random.Generator,
  crystals: Crystals,
  forces: np.ndarray,
  stress: np.ndarray,
  *,
  rotations: np.ndarray,
  noisy: np.ndarray,
  noise_std: float,
) -> tuple[Crystals, np.ndarray, np.ndarray]:
  """Rotate, then perturb, a padded batch (shapes as :func:`rotate`; ``noisy [B]`` bool).

  Padding structures should carry identity rotations and ``noisy == False``.
  """
  crystals, forces, stress = rotate(crystals, forces, stress, rotations)
  crystals = add_noise(rng, crystals, std=noise_std, where=noisy)
  return crystals, forces, stress
