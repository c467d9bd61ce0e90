"""Training data: dataset folders and their checks, normalisation statistics, and batches.

Frames are grouped by atom-count bucket (:func:`crystal_search.crystals.bucket_size`) and cut
into fixed-size batches, so a jitted step compiles once per bucket; the neighbour capacity of
each bucket is computed on the host from the data (with a margin).  Each epoch's order and
augmentation (:mod:`crystal_search.augment`) depend only on ``(seed, epoch)``.

Units: forces eV/Å, stress kBar, energy eV per cell (per atom where named), lengths Å.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
from flax import struct

from crystal_search import augment
from crystal_search.crystals import Crystals, bucket_size
from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError
from crystal_search.training.config import Log

#: Dataset splits read from ``config.data.path``.
REQUIRED_SPLITS = ("train", "val")
OPTIONAL_SPLITS = ("test", "holdout")


@dataclasses.dataclass
class Dataset:
  """The splits of one dataset folder.

  Attributes:
    splits: split name -> frames (``train`` and ``val`` always; ``test`` and
      ``holdout`` when the files exist and are non-empty).
    version: hash of ``manifest.json`` and the split files (the data version).
    path: the folder.
  """

  splits: dict[str, frames_lib.Frames]
  version: str
  path: str


def dataset_version(path: str, names: Sequence[str]) -> str:
  """SHA-256 (16 hex digits) over ``manifest.json`` (if present) and the named files' bytes."""
  h = hashlib.sha256()
  for name in ["manifest.json", *names]:
    full = os.path.join(path, name)
    if os.path.exists(full):
      h.update(name.encode())
      with open(full, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
  return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _reduced_formula(counts: tuple[tuple[int, int], ...]) -> str:
  from pymatgen.core import Composition, Element

  return Composition({Element.from_Z(z): n for z, n in counts}).reduced_formula


def frame_formulas(frames: frames_lib.Frames) -> list[str]:
  """Reduced formula of every frame."""
  out = []
  off = frames.offsets
  for i in range(len(frames)):
    z, n = np.unique(frames.numbers[off[i] : off[i + 1]], return_counts=True)
    out.append(_reduced_formula(tuple(zip(z.tolist(), n.tolist()))))
  return out


def _subset(frames: frames_lib.Frames, limit: int, seed: int) -> frames_lib.Frames:
  if not limit or len(frames) <= limit:
    return frames
  idx = np.sort(np.random.default_rng(seed).permutation(len(frames))[:limit])
  return frames.select(idx)


#: Å taken off every cell height when checking the image range, so that positional and lattice
#: noise (augmentation, <= 0.03 Å std) cannot push a kept frame over it.
THIN_CELL_MARGIN = 0.1


def too_thin(lattice: np.ndarray, *, cutoff: float, max_images: int) -> np.ndarray:
  """``[F]`` bool: cells (rows, Å) whose neighbours within ``cutoff`` lie beyond ``max_images``.

  A cell of height ``h`` needs ``floor(cutoff / h + 1/2)`` images per axis
  (:func:`crystal_search.graphs.required_images`); heights are reduced by
  :data:`THIN_CELL_MARGIN` first.
  """
  from crystal_search import graphs

  heights = graphs.cell_heights(np.asarray(lattice)).min(axis=-1) - THIN_CELL_MARGIN
  need = np.floor(cutoff / np.maximum(heights, 1e-6) + 0.5)
  return need > max_images


def _missing_split_hint(path: str) -> str:
  """What to do about a dataset folder without its train/val split."""
  manifest = os.path.join(path, "manifest.json")
  if os.path.exists(os.path.join(path, "strain.npz")) and os.path.exists(manifest):
    with open(manifest) as f:
      base = os.path.normpath(os.path.join(path, json.load(f).get("base_dataset", "..")))
    return (
      "a strain-frame dataset: rebuild its train.npz from strain.npz in seconds with "
      f"`crystal-search build-strain-frames --teacher= --dataset={base} --output={path}`"
    )
  return "the dataset needs train.npz and val.npz"


def load_dataset(
  data_config: ml_collections.ConfigDict,
  *,
  elements: Sequence[str],
  seed: int = 0,
  log: Log | None = None,
  cutoff: float | None = None,
  max_images: int | None = None,
) -> Dataset:
  """Read and check a dataset folder.

  Frames whose reduced formula is in ``data_config.holdout`` are removed from
  ``train`` and ``val``.  With ``cutoff`` (Å) and ``max_images`` (the model's static periodic
  image range), frames whose cells are too thin for that range (:func:`too_thin`) are removed
  from every split and counted in the log: the jitted model cannot see all their neighbours.
  Raises :class:`InputError` for a missing folder or split file, an empty training or
  validation set, or elements the model does not know.
  """
  from pymatgen.core import Element

  path = data_config.path
  if not os.path.isdir(path):
    raise InputError(f"config.data.path {path}: no such dataset folder")
  splits = {}
  for name in REQUIRED_SPLITS + OPTIONAL_SPLITS:
    file = os.path.join(path, f"{name}.npz")
    if not os.path.exists(file):
      if name in REQUIRED_SPLITS:
        raise InputError(f"{file}: no such file ({_missing_split_hint(path)})")
      continue
    splits[name] = frames_lib.load(file)
  allowed = {Element(e).Z for e in elements}
  holdout = set(data_config.holdout)
  for name, frames in list(splits.items()):
    if len(frames) == 0:
      if name in REQUIRED_SPLITS:
        raise InputError(f"{os.path.join(path, name + '.npz')}: no frames")
      del splits[name]
      continue
    unknown = sorted(set(np.unique(frames.numbers).tolist()) - allowed)
    if unknown:
      symbols = ", ".join(Element.from_Z(z).symbol for z in unknown)
      raise InputError(
        f"{os.path.join(path, name + '.npz')}: element(s) {symbols} not in the model's "
        f"elements ({', '.join(elements)})"
      )
    if name in REQUIRED_SPLITS and holdout:
      keep = np.array([f not in holdout for f in frame_formulas(frames)])
      if not keep.all():
        if log:
          log(f"{name}: dropped {int((~keep).sum())} frames of held-out {sorted(holdout)}")
        frames = frames.select(np.flatnonzero(keep))
        if len(frames) == 0:
          raise InputError(
            f"{path}/{name}.npz: no frames left outside the holdout {sorted(holdout)}"
          )
    if cutoff is not None and max_images is not None:
      thin = too_thin(frames.lattice, cutoff=cutoff, max_images=max_images)
      if thin.any():
        if log:
          log(
            f"{name}: dropped {int(thin.sum())} frames with cells too thin for "
            f"{max_images} periodic images at a {cutoff:g} Å cutoff"
          )
        frames = frames.select(np.flatnonzero(~thin))
        if len(frames) == 0:
          raise InputError(f"{path}/{name}.npz: every frame's cell is too thin for the model")
    limit = data_config.max_train_frames if name == "train" else data_config.max_eval_frames
    splits[name] = _subset(frames, limit, seed)
  version = dataset_version(path, [f"{n}.npz" for n in REQUIRED_SPLITS + OPTIONAL_SPLITS])
  return Dataset(splits=splits, version=version, path=os.path.abspath(path))


def normalization_stats(frames: frames_lib.Frames) -> dict[str, np.ndarray]:
  """Standardisation statistics of a training set (float32).

  Returns:
    ``force_mean`` and ``force_std`` (scalars over all Cartesian components,
    eV/Å), ``stress_mean`` and ``stress_std`` (scalars over the 9 components,
    kBar), ``energy_mean`` and ``energy_std`` (eV per atom; NaN when energies
    are missing).
  """
  f = np.asarray(frames.forces, np.float64)
  s = np.asarray(frames.stress, np.float64)
  e = np.asarray(frames.energy, np.float64) / np.maximum(frames.n_atoms, 1)

  def std(x):
    v = float(np.std(x)) if x.size else 1.0
    return v if v > 1e-8 else 1.0

  finite = e[np.isfinite(e)]
  return {
    "force_mean": np.float32(f.mean() if f.size else 0.0),
    "force_std": np.float32(std(f)),
    "stress_mean": np.float32(s.mean() if s.size else 0.0),
    "stress_std": np.float32(std(s)),
    "energy_mean": np.float32(finite.mean() if finite.size else np.nan),
    "energy_std": np.float32(std(finite) if finite.size else np.nan),
  }


@struct.dataclass
class Batch:
  """A padded batch of labelled structures.

  Attributes:
    crystals: ``B`` structures, ``N`` atom slots.
    forces: ``[B, N, 3]`` eV/Å (zero on padding).
    stress: ``[B, 3, 3]`` kBar (zero on padding structures).
    energy: ``[B]`` eV per cell (zero on padding structures).
  """

  crystals: Crystals
  forces: Any
  stress: Any
  energy: Any


def bucket_batches(
  n_atoms: np.ndarray,
  *,
  batch_size: int,
  rng: np.random.Generator | None = None,
) -> list[tuple[int, np.ndarray]]:
  """Cut frames into batches of one atom-count bucket each.

  Args:
    n_atoms: ``[F]`` atoms per frame.
    batch_size: frames per batch (the last batch of a bucket may hold fewer;
      it is padded when packed).
    rng: shuffles frames within buckets and the order of batches; None keeps
      the frame order and goes bucket by bucket.

  Returns:
    ``[(bucket, frame_indices), ...]``.
  """
  buckets = np.array([bucket_size(int(n)) for n in n_atoms], np.int64)
  out = []
  for b in sorted(set(buckets.tolist())):
    idx = np.flatnonzero(buckets == b)
    if rng is not None:
      idx = rng.permutation(idx)
    out.extend((b, idx[k : k + batch_size]) for k in range(0, len(idx), batch_size))
  if rng is not None:
    out = [out[k] for k in rng.permutation(len(out))]
  return out


def make_batch(
  frames: frames_lib.Frames, indices: np.ndarray, *, max_atoms: int, batch_size: int
) -> Batch:
  """Pack frames ``indices`` into a :class:`Batch` of ``batch_size`` slots × ``max_atoms`` atoms."""
  crystals, forces, stress = frames.to_batch(indices, max_atoms=max_atoms, batch_size=batch_size)
  energy = np.zeros((batch_size,), np.float32)
  e = np.asarray(frames.energy[indices], np.float32)
  energy[: len(indices)] = np.where(np.isfinite(e), e, 0.0)
  return Batch(crystals=crystals, forces=forces, stress=stress, energy=energy)


def neighbour_capacities(
  frame_sets: Sequence[frames_lib.Frames],
  *,
  cutoff: float,
  margin: float,
  chunk: int = 64,
) -> dict[int, int]:
  """Edges per structure to allocate for each atom-count bucket (host-side, once).

  The largest count of :func:`crystal_search.graphs.required_capacity` over
  all frames of a bucket, times ``margin`` (room for positional noise).
  """
  from crystal_search import graphs

  need: dict[int, int] = {}
  for frames in frame_sets:
    for bucket, idx in bucket_batches(frames.n_atoms, batch_size=chunk):
      crystals, _, _ = frames.to_batch(idx, max_atoms=bucket)
      count = int(graphs.required_capacity(crystals, cutoff))
      need[bucket] = max(need.get(bucket, 0), count)
  return {b: max(8, int(math.ceil(n * margin))) for b, n in need.items()}


def epoch_batches(
  frames: frames_lib.Frames, config: ml_collections.ConfigDict, epoch: int
) -> Iterator[tuple[int, Batch]]:
  """Yield the augmented training batches of one epoch (depends only on seed and epoch)."""
  rng = np.random.default_rng([config.seed, epoch])
  order = bucket_batches(frames.n_atoms, batch_size=config.batch_size, rng=rng)
  plan = augment.plan_epoch(
    rng,
    len(frames),
    rotate_fraction=config.augment.rotate_fraction,
    noise_fraction=config.augment.noise_fraction,
  )
  bs = config.batch_size
  for k, (bucket, idx) in enumerate(order):
    batch = make_batch(frames, idx, max_atoms=bucket, batch_size=bs)
    rotations = np.tile(np.eye(3), (bs, 1, 1))
    rotations[: len(idx)] = plan.rotations[idx]
    noisy = np.zeros((bs,), bool)
    noisy[: len(idx)] = plan.noisy[idx]
    crystals, forces, stress = augment.apply(
      np.random.default_rng([config.seed, epoch, k]),
      batch.crystals,
      batch.forces,
      batch.stress,
      rotations=rotations,
      noisy=noisy,
      noise_std=config.augment.noise_std,
    )
    yield bucket, Batch(crystals=crystals, forces=forces, stress=stress, energy=batch.energy)
