"""The paper's dataset protocol (Cheon et al. 2020, section 3.3 and appendix 7.3).

From every relaxation trajectory:

* **training frames** come from the high-force part (max atomic force
  > 0.1 eV/Å), at most one out of every five ionic steps, dropping a frame that
  StructureMatcher (``stol=0.05``, :func:`crystal_search.metrics.dataset_matcher`)
  finds identical to the previously kept one;
* **trajectory evaluation** keeps the whole trajectory up to the step where the
  max force first falls below 0.1 eV/Å (that step included: it is the end point
  a model relaxation must reach).

Trajectories (not frames) are split 80/10/10 into train/validation/test with a
fixed seed; the split of a trajectory depends only on its name and the seed
(a stable hash), so adding relaxations never moves an existing one to another
split and shards can be processed one at a time.  Held-out stoichiometries
(Li15Si4 in the paper) go entirely to ``holdout``.

:func:`build_dataset` streams the relaxation files of a teacher run (or of
imported data) one by one and writes ``train.npz``, ``val.npz``, ``test.npz``,
``test_trajectories.npz``, ``holdout.npz``, ``holdout_trajectories.npz``
(:class:`~crystal_search.datasets.frames.Frames`) and ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Options of the dataset protocol.

  Attributes:
    force_threshold: eV/Å; frames with a larger max atomic force are "high force".
    stride: keep at most one frame out of every ``stride`` ionic steps.
    stol: StructureMatcher ``stol`` for dropping a frame equal to the previous kept one.
    fractions: train/val/test fractions of the trajectories.
    seed: seed of the split.
    holdout: stoichiometries (reduced formulas) held out entirely.
    skip_failed: leave out relaxations marked failed.
  """

  force_threshold: float = 0.1
  stride: int = 5
  stol: float = 0.05
  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  seed: int = 0
  holdout: tuple[str, ...] = ("Li15Si4",)
  skip_failed: bool = True


def max_forces(frames: frames_lib.Frames) -> np.ndarray:
  """``[F]`` largest atomic force magnitude of each frame (eV/Å)."""
  norms = np.linalg.norm(np.asarray(frames.forces, np.float64), axis=-1)
  off = frames.offsets
  out = np.zeros(len(frames))
  for i in range(len(frames)):
    a, b = off[i], off[i + 1]
    out[i] = norms[a:b].max() if b > a else 0.0
  return out


def trajectory_prefix(frames: frames_lib.Frames, threshold: float = 0.1) -> np.ndarray:
  """Frame indices of one trajectory up to the first frame with max force < ``threshold``.

  Frames are taken in ``step`` order; the first low-force frame is included.  A
  trajectory that never gets below ``threshold`` is kept whole.
  """
  order = np.argsort(frames.step, kind="stable")
  fmax = max_forces(frames)[order]
  below = np.nonzero(fmax < threshold)[0]
  end = int(below[0]) + 1 if len(below) else len(order)
  return order[:end]


def sample_training_frames(
  frames: frames_lib.Frames,
  *,
  config: SamplingConfig = SamplingConfig(),
  matcher=None,
) -> np.ndarray:
  """Frame indices of one trajectory the paper samples for training.

  High-force frames (max force > ``config.force_threshold``) in step order; a frame is
  kept when at least ``config.stride`` steps lie between it and the previous kept
  frame and StructureMatcher does not match it to that frame.
  """
  if matcher is None:
    from crystal_search.metrics import dataset_matcher

    matcher = dataset_matcher(stol=config.stol)
  order = np.argsort(frames.step, kind="stable")
  fmax = max_forces(frames)
  kept: list[int] = []
  last_step = None
  last_structure = None
  for i in order:
    if fmax[i] <= config.force_threshold:
      continue
    step = int(frames.step[i])
    if last_step is not None and step - last_step < config.stride:
      continue
    structure = frames.structure(int(i))
    if last_structure is not None and matcher.fit(last_structure, structure):
      continue
    kept.append(int(i))
    last_step, last_structure = step, structure
  return np.asarray(kept, np.int64)


def split_of(name: str, *, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
  """``'train'``, ``'val'`` or ``'test'`` for a trajectory name (stable hash with ``seed``)."""
  total = float(sum(fractions))
  if total <= 0 or any(f < 0 for f in fractions):
    raise InputError(f"split fractions {tuple(fractions)}: must be non-negative, not all zero")
  digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2**64
  edges = np.cumsum(fractions) / total
  for split, edge in zip(SPLITS, edges):
    if u < edge:
      return split
  return SPLITS[-1]


def formula_of(frames: frames_lib.Frames) -> str:
  """Reduced formula of a relaxation file (its metadata's, else its first frame's)."""
  formula = frames.metadata.get("formula")
  if formula:
    return str(formula)
  return frames.structure(0).composition.reduced_formula


class _Collector:
  """Accumulates selected frames per output set (only selected frames stay in memory)."""

  def __init__(self):
    self.parts: dict[str, list[frames_lib.Frames]] = defaultdict(list)

  def add(self, key: str, frames: frames_lib.Frames, indices: np.ndarray) -> int:
    if len(indices) == 0:
      return 0
    part = frames.select(indices)
    part.metadata = {}
    self.parts[key].append(part)
    return len(indices)

  def save(self, key: str, path: str, metadata: dict) -> int:
    parts = self.parts.get(key, [])
    out = frames_lib.concatenate(parts) if parts else frames_lib.from_arrays([])
    out.metadata = metadata
    out.save(path)
    return len(out)


def _cache_key(path: str) -> str:
  st = os.stat(path)
  return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def _cache_settings(config: SamplingConfig) -> dict:
  return {"force_threshold": config.force_threshold, "stride": config.stride, "stol": config.stol}


def _load_cache(path: str, config: SamplingConfig) -> dict[str, list[int]]:
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return {}
  if data.get("settings") != _cache_settings(config):
    return {}
  return dict(data.get("sampled", {}))


def _save_cache(path: str, config: SamplingConfig, sampled: dict[str, list[int]]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"settings": _cache_settings(config), "sampled": sampled}, f)
  os.replace(tmp, path)


def iter_relaxations(paths: Iterable[str]) -> Iterable[tuple[str, frames_lib.Frames]]:
  """``(path, Frames)`` for each relaxation file (loaded one at a time)."""
  for path in paths:
    yield path, frames_lib.load(path)


def build_dataset(
  paths: Sequence[str],
  output_dir: str,
  *,
  config: SamplingConfig = SamplingConfig(),
  source: str = "",
  progress: bool = False,
  log: Callable[[str], None] | None = None,
  use_cache: bool = True,
) -> dict:
  """Apply the protocol to relaxation files and write the dataset; returns the manifest.

  The training-frame choice of each file (the StructureMatcher work, the slow part) is
  cached in ``<output_dir>/sampling_cache.json`` keyed by path, size and modification
  time and by the protocol settings, so a rebuild after more relaxations finish only
  samples the new files (``use_cache=False`` recomputes everything).

  Args:
    paths: relaxation files (one trajectory each: teacher output or imported).
    output_dir: where the ``.npz`` sets and ``manifest.json`` go.
    config: the protocol's options.
    source: description of where the data came from (for the manifest).
  """
  if not paths:
    raise InputError("no relaxation files to build a dataset from")
  from crystal_search.metrics import dataset_matcher

  matcher = dataset_matcher(stol=config.stol)
  holdout = set(config.holdout)
  cache_path = os.path.join(output_dir, "sampling_cache.json")
  cache = _load_cache(cache_path, config) if use_cache else {}
  new_cache: dict[str, list[int]] = {}
  collector = _Collector()
  per: dict[str, dict] = defaultdict(
    lambda: {
      "relaxations": 0,
      "converged": 0,
      "failed": 0,
      "skipped_failed": 0,
      "trajectories_train": 0,
      "trajectories_val": 0,
      "trajectories_test": 0,
      "trajectories_holdout": 0,
      "frames_train": 0,
      "frames_val": 0,
      "frames_test": 0,
      "frames_holdout": 0,
      "frames_test_trajectories": 0,
      "frames_holdout_trajectories": 0,
      "steps_total": 0,
    }
  )
  iterator: Iterable = iter_relaxations(paths)
  if progress:
    from tqdm import tqdm

    iterator = tqdm(iterator, total=len(paths), desc="build", unit="file")
  for _path, frames in iterator:
    meta = frames.metadata
    formula = formula_of(frames) if len(frames) else str(meta.get("formula", "unknown"))
    row = per[formula]
    row["relaxations"] += 1
    row["converged"] += int(bool(meta.get("converged")))
    failed = bool(meta.get("failed"))
    row["failed"] += int(failed)
    if (failed and config.skip_failed) or len(frames) == 0:
      row["skipped_failed"] += int(failed)
      continue
    row["steps_total"] += len(frames)
    name = frames.trajectory_names[0] if frames.trajectory_names else meta.get("name", _path)
    key = _cache_key(_path)
    if key in cache:
      sampled = np.asarray(cache[key], np.int64)
    else:
      sampled = sample_training_frames(frames, config=config, matcher=matcher)
    new_cache[key] = [int(i) for i in sampled]
    prefix = trajectory_prefix(frames, config.force_threshold)
    if formula in holdout:
      row["trajectories_holdout"] += 1
      row["frames_holdout"] += collector.add("holdout", frames, sampled)
      row["frames_holdout_trajectories"] += collector.add("holdout_trajectories", frames, prefix)
      continue
    split = split_of(str(name), seed=config.seed, fractions=config.fractions)
    row[f"trajectories_{split}"] += 1
    row[f"frames_{split}"] += collector.add(split, frames, sampled)
    if split == "test":
      row["frames_test_trajectories"] += collector.add("test_trajectories", frames, prefix)
    if log is not None:
      log(f"{name}: {formula} {split} {len(sampled)} frames of {len(frames)} steps")
  os.makedirs(output_dir, exist_ok=True)
  if use_cache:
    _save_cache(cache_path, config, new_cache)
  set_meta = {"protocol": dataclasses.asdict(config), "source": source}
  files = {}
  for key in ("train", "val", "test", "test_trajectories", "holdout", "holdout_trajectories"):
    path = os.path.join(output_dir, f"{key}.npz")
    n = collector.save(key, path, dict(set_meta, set=key))
    files[key] = {"path": os.path.basename(path), "frames": n}
  manifest = {
    "protocol": dataclasses.asdict(config),
    "source": source,
    "relaxation_files": len(paths),
    "files": files,
    "per_stoichiometry": {k: dict(v) for k, v in sorted(per.items())},
  }
  tmp = os.path.join(output_dir, "manifest.json.tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, os.path.join(output_dir, "manifest.json"))
  return manifest


#: What an MD run file's metadata contributes to the MD manifest's ``runs`` (one row per run).
MD_RUN_KEYS = (
  "name",
  "n_atoms",
  "cell_note",
  "supercell_matrix",
  "temperature_k",
  "timestep_fs",
  "sample_every",
  "stol",
  "seed",
  "steps",
  "simulated_ps",
  "mean_temperature_k",
  "max_temperature_k",
  "wall_seconds",
  "diverged",
)


def build_md_dataset(
  paths: Sequence[str],
  output_dir: str,
  *,
  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
  holdout: Sequence[str] = ("Li15Si4",),
  source: str = "",
) -> dict:
  """Split MD frame files into train/val/test by time: the first 80 % of each run's frames
  train, the next 10 % validate, the last 10 % test (neighbouring MD frames are correlated, so
  a random frame split would leak).  Runs of held-out stoichiometries are left out.

  Writes ``train.npz``, ``val.npz``, ``test.npz`` and ``manifest.json`` (frames per split and
  stoichiometry, and per run its settings, atoms, ps simulated, frames kept and wall seconds);
  returns the manifest.
  """
  if not paths:
    raise InputError("no MD frame files to build a dataset from")
  total = float(sum(fractions))
  if total <= 0 or any(f < 0 for f in fractions):
    raise InputError(f"split fractions {tuple(fractions)}: must be non-negative, not all zero")
  collector = _Collector()
  per: dict[str, dict] = defaultdict(lambda: {"runs": 0, **{f"frames_{s}": 0 for s in SPLITS}})
  runs = []
  for path in paths:
    frames = frames_lib.load(path)
    formula = formula_of(frames)
    if formula in set(holdout) or len(frames) == 0:
      continue
    per[formula]["runs"] += 1
    meta = frames.metadata
    runs.append(
      {
        "file": os.path.basename(path),
        "formula": formula,
        "frames": len(frames),
        **{k: meta[k] for k in MD_RUN_KEYS if k in meta},
      }
    )
    order = np.argsort(frames.step, kind="stable")
    edges = np.round(np.cumsum(fractions) / total * len(order)).astype(int)
    start = 0
    for split, end in zip(SPLITS, edges):
      per[formula][f"frames_{split}"] += collector.add(split, frames, order[start:end])
      start = end
  os.makedirs(output_dir, exist_ok=True)
  files = {}
  for key in SPLITS:
    path = os.path.join(output_dir, f"{key}.npz")
    meta = {"set": key, "source": source, "split": "by time within each MD run"}
    files[key] = {"path": os.path.basename(path), "frames": collector.save(key, path, meta)}
  manifest = {
    "kind": "md",
    "fractions": list(fractions),
    "holdout": list(holdout),
    "source": source,
    "files": files,
    "per_stoichiometry": {k: dict(v) for k, v in sorted(per.items())},
    "runs": runs,
  }
  with open(os.path.join(output_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest
