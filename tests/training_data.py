"""Tiny synthetic Li–Si datasets for the training tests, labelled by an analytic Morse potential."""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from crystal_search.crystals import Crystals
from crystal_search.datasets import frames as frames_lib


def _sequential_positions(rng, n, lattice, min_dist):
  """Random fractional positions added one at a time, each at least ``min_dist`` Å from the rest."""
  while True:
    frac = np.zeros((0, 3))
    for _ in range(200 * n):
      trial = rng.uniform(size=3)
      d = frac - trial
      d -= np.round(d)
      if len(frac) == 0 or np.linalg.norm(d @ lattice, axis=1).min() >= min_dist:
        frac = np.vstack([frac, trial])
        if len(frac) == n:
          return frac


def random_cells(
  seed: int, num: int, *, sizes: tuple[int, ...] = (2, 3, 4, 5, 6), min_dist: float = 1.9
) -> Crystals:
  """``num`` random periodic Li/Si cells (triclinic, 18–26 Å^3 per atom) padded to 8 or 16 atom slots."""
  rng = np.random.default_rng(seed)
  cells = []
  for _ in range(num):
    n = int(rng.choice(sizes))
    a = max(3.4, (n * rng.uniform(18.0, 26.0)) ** (1 / 3))
    lattice = a * (np.eye(3) + 0.08 * rng.normal(size=(3, 3)))
    frac = _sequential_positions(rng, n, lattice, min_dist)
    numbers = rng.choice([3, 14], size=n)
    cells.append((frac, lattice, numbers))
  width = 8 if max(sizes) <= 8 else 16
  positions = np.zeros((num, width, 3), np.float32)
  lattices = np.zeros((num, 3, 3), np.float32)
  numbers = np.zeros((num, width), np.int32)
  mask = np.zeros((num, width), bool)
  n_atoms = np.zeros((num,), np.int32)
  for k, (f, lat, z) in enumerate(cells):
    n = len(z)
    positions[k, :n] = f
    lattices[k] = lat
    numbers[k, :n] = z
    mask[k, :n] = True
    n_atoms[k] = n
  return Crystals(positions, lattices, numbers, mask, n_atoms)


@functools.lru_cache(maxsize=1)
def morse():
  """The Morse test potential of the teacher module, jitted (forces/stress by autodiff)."""
  from crystal_search.datasets.teacher import morse_force_field

  return jax.jit(morse_force_field())


def label(crystals: Crystals, force_field=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(forces [B, N, 3] eV/Å, stress [B, 3, 3] kBar, energy [B] eV)`` from the Morse potential."""
  ff = force_field or morse()
  out = ff(crystals)
  return np.asarray(out.forces), np.asarray(out.stress), np.asarray(out.energy)


def make_frames(seed: int, num: int, **kwargs) -> frames_lib.Frames:
  """``num`` labelled frames as a :class:`Frames` set."""
  crystals = random_cells(seed, num, **kwargs)
  forces, stress, energy = label(crystals)
  rows = []
  for k in range(num):
    n = int(crystals.n_atoms[k])
    rows.append(
      dict(
        numbers=crystals.atomic_numbers[k, :n],
        positions=crystals.positions[k, :n],
        forces=forces[k, :n],
        lattice=crystals.lattice[k],
        stress=stress[k],
        energy=energy[k],
        trajectory=k,
        step=0,
      )
    )
  return frames_lib.from_arrays(
    rows, trajectory_names=[f"synthetic_{seed}_{k}" for k in range(num)], metadata={"seed": seed}
  )


def make_dataset(directory: str, *, seed: int = 0, sizes=(2, 3, 4, 5, 6, 10), counts=None) -> str:
  """Write ``train/val/test/holdout.npz`` and a ``manifest.json`` into ``directory``."""
  import json

  counts = counts or {"train": 48, "val": 12, "test": 12, "holdout": 6}
  os.makedirs(directory, exist_ok=True)
  every = make_frames(seed, sum(counts.values()), sizes=sizes)
  start = 0
  for split, num in counts.items():
    every.select(np.arange(start, start + num)).save(os.path.join(directory, f"{split}.npz"))
    start += num
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump({"synthetic": True, "seed": seed, "counts": counts}, f)
  return directory
