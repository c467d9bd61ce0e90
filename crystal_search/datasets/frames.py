"""The on-disk and in-memory format of labelled frames (structures with forces and stress).

A :class:`Frames` set stores ``F`` frames with ``A`` atoms in all, ragged and
flat, like ASE databases and most ML-potential codes:

* per atom (``[A, ...]``): ``numbers``, ``positions`` (fractional), ``forces`` (eV/Å);
* per frame (``[F, ...]``): ``lattice`` (rows, Å), ``stress`` (kBar, tensile
  positive, see :mod:`crystal_search.units`), ``energy`` (eV per cell, NaN when
  unknown), ``n_atoms``, ``trajectory`` (index into ``trajectory_names``),
  ``step`` (ionic step within its trajectory).

On disk a set is one ``.npz`` file (``numpy.savez_compressed``) holding these
arrays plus ``trajectory_names`` (str) and ``metadata`` (a JSON string).
Datasets are folders of such shards that stream one shard at a time.  Files
are written atomically (temporary name, then ``os.replace``) so an interrupted
writer never leaves a half-written shard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Lattice, Structure

from crystal_search.crystals import Crystals, bucket_size
from crystal_search.errors import InputError

_PER_ATOM = ("numbers", "positions", "forces")
_PER_FRAME = ("lattice", "stress", "energy", "n_atoms", "trajectory", "step")


@dataclasses.dataclass
class Frames:
  """Labelled frames, ragged and flat (see module docstring for shapes and units)."""

  numbers: np.ndarray
  positions: np.ndarray
  forces: np.ndarray
  lattice: np.ndarray
  stress: np.ndarray
  energy: np.ndarray
  n_atoms: np.ndarray
  trajectory: np.ndarray
  step: np.ndarray
  trajectory_names: list[str] = dataclasses.field(default_factory=list)
  metadata: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.n_atoms.shape[0])

  @property
  def offsets(self) -> np.ndarray:
    """``[F + 1]`` start of each frame's atoms in the per-atom arrays."""
    return np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)

  def atom_slice(self, i: int) -> slice:
    off = self.offsets
    return slice(int(off[i]), int(off[i + 1]))

  def structure(self, i: int) -> Structure:
    """Frame ``i`` as a pymatgen Structure."""
    sl = self.atom_slice(i)
    return Structure(Lattice(self.lattice[i]), self.numbers[sl].tolist(), self.positions[sl])

  def select(self, indices: Sequence[int] | np.ndarray) -> Frames:
    """A new set with the frames ``indices`` (in that order); trajectory names kept."""
    indices = np.asarray(indices, dtype=np.int64)
    off = self.offsets
    atom_idx = (
      np.concatenate([np.arange(off[i], off[i + 1]) for i in indices])
      if len(indices)
      else np.zeros((0,), np.int64)
    )
    per_atom = {k: getattr(self, k)[atom_idx] for k in _PER_ATOM}
    per_frame = {k: getattr(self, k)[indices] for k in _PER_FRAME}
    return Frames(
      **per_atom,
      **per_frame,
      trajectory_names=list(self.trajectory_names),
      metadata=dict(self.metadata),
    )

  def to_batch(
    self,
    indices: Sequence[int] | np.ndarray,
    *,
    max_atoms: int | None = None,
    batch_size: int | None = None,
  ) -> tuple[Crystals, np.ndarray, np.ndarray]:
    """Pack frames into a padded batch.

    Returns:
      ``(crystals, forces [B, N, 3] eV/Å, stress [B, 3, 3] kBar)``; padding atoms
      and padding structures have zero targets.
    """
    indices = np.asarray(indices, dtype=np.int64)
    largest = int(self.n_atoms[indices].max()) if len(indices) else 1
    n = max_atoms or bucket_size(largest)
    b = batch_size or len(indices)
    positions = np.zeros((b, n, 3), np.float32)
    lattice = np.tile(np.eye(3, dtype=np.float32) * 10.0, (b, 1, 1))
    numbers = np.zeros((b, n), np.int32)
    mask = np.zeros((b, n), bool)
    n_atoms = np.zeros((b,), np.int32)
    forces = np.zeros((b, n, 3), np.float32)
    stress = np.zeros((b, 3, 3), np.float32)
    off = self.offsets
    for k, i in enumerate(indices):
      a, e = int(off[i]), int(off[i + 1])
      m = e - a
      positions[k, :m] = self.positions[a:e]
      numbers[k, :m] = self.numbers[a:e]
      forces[k, :m] = self.forces[a:e]
      mask[k, :m] = True
      n_atoms[k] = m
      lattice[k] = self.lattice[i]
      stress[k] = self.stress[i]
    return Crystals(positions, lattice, numbers, mask, n_atoms), forces, stress

  def save(self, path: str) -> None:
    """Write atomically to ``path`` (``.npz``)."""
    arrays = {k: getattr(self, k) for k in _PER_ATOM + _PER_FRAME}
    arrays["trajectory_names"] = np.asarray(self.trajectory_names, dtype=str)
    arrays["metadata"] = np.asarray(json.dumps(self.metadata))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, **arrays)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise


def load(path: str) -> Frames:
  """Read a ``.npz`` shard written by :meth:`Frames.save`; :class:`InputError` on a bad file."""
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  try:
    with np.load(path, allow_pickle=False) as data:
      kwargs = {k: data[k] for k in _PER_ATOM + _PER_FRAME}
      names = [str(x) for x in data["trajectory_names"]]
      metadata = json.loads(str(data["metadata"]))
  except KeyError as e:
    raise InputError(f"{path}: not a crystal-search frames file (missing {e})") from None
  except Exception as e:  # noqa: BLE001
    raise InputError(f"{path}: cannot read frames ({type(e).__name__}: {e})") from None
  frames = Frames(**kwargs, trajectory_names=names, metadata=metadata)
  if frames.offsets[-1] != len(frames.numbers):
    raise InputError(f"{path}: inconsistent frames file (atom counts do not add up)")
  return frames


def concatenate(parts: Sequence[Frames]) -> Frames:
  """Join frame sets; trajectory indices are renumbered into one name list."""
  if not parts:
    raise InputError("no frames to concatenate")
  names: list[str] = []
  trajectories = []
  for p in parts:
    base = len(names)
    names.extend(p.trajectory_names)
    trajectories.append(p.trajectory + base)
  out = {k: np.concatenate([getattr(p, k) for p in parts]) for k in _PER_ATOM + _PER_FRAME}
  out["trajectory"] = np.concatenate(trajectories)
  return Frames(**out, trajectory_names=names, metadata=dict(parts[0].metadata))


def from_arrays(
  frames: Sequence[dict],
  *,
  trajectory_names: Sequence[str] = (),
  metadata: dict | None = None,
) -> Frames:
  """Build a set from per-frame dicts with keys ``numbers [n]``, ``positions [n,3]`` (fractional),
  ``forces [n,3]`` (eV/Å), ``lattice [3,3]`` (Å), ``stress [3,3]`` (kBar, project sign),
  ``energy`` (eV or NaN), ``trajectory`` (int), ``step`` (int)."""
  if not frames:
    return Frames(
      numbers=np.zeros((0,), np.int32),
      positions=np.zeros((0, 3), np.float64),
      forces=np.zeros((0, 3), np.float64),
      lattice=np.zeros((0, 3, 3), np.float64),
      stress=np.zeros((0, 3, 3), np.float64),
      energy=np.zeros((0,), np.float64),
      n_atoms=np.zeros((0,), np.int32),
      trajectory=np.zeros((0,), np.int32),
      step=np.zeros((0,), np.int32),
      trajectory_names=list(trajectory_names),
      metadata=dict(metadata or {}),
    )
  return Frames(
    numbers=np.concatenate([np.asarray(f["numbers"], np.int32) for f in frames]),
    positions=np.concatenate([np.asarray(f["positions"], np.float64) for f in frames]),
    forces=np.concatenate([np.asarray(f["forces"], np.float64) for f in frames]),
    lattice=np.stack([np.asarray(f["lattice"], np.float64) for f in frames]),
    stress=np.stack([np.asarray(f["stress"], np.float64) for f in frames]),
    energy=np.asarray([float(f.get("energy", np.nan)) for f in frames], np.float64),
    n_atoms=np.asarray([len(f["numbers"]) for f in frames], np.int32),
    trajectory=np.asarray([int(f.get("trajectory", 0)) for f in frames], np.int32),
    step=np.asarray([int(f.get("step", 0)) for f in frames], np.int32),
    trajectory_names=list(trajectory_names),
    metadata=dict(metadata or {}),
  )
