"""Strained copies of relaxed training structures, labelled by the teacher (equation-of-state frames).

The paper's sampling (:mod:`crystal_search.datasets.sampling`) keeps only the high-force part of
each relaxation (max force > 0.1 eV/Å), so a network trained on it never sees a crystal near
equilibrium under strain, and nothing ties its stress to volume there:
``benchmarks/equation_of_state.py`` measured the bulk moduli of the known phases of a model
trained that way (`pretrained.py:cutoff4`) at a sixth of the teacher's (Li15Si4: 3.7
against 26.9 GPa; the width-64 model and the paper's plane stress head trained the same way
alike), so its relaxations stop wherever the pressure falls below the threshold (held-out Li15Si4
hits between 0.89 and 1.07 of the experimental volume).  This module adds that response (the
shipped model is trained with it: bulk moduli 0.96 of the teacher's), the way DFT training sets
add equation-of-state and elastic frames: the last structure of every *training* trajectory of a
built dataset (same split rule and holdout as its ``manifest.json``; validation, test and
held-out trajectories are never touched) is copied ``copies`` times with a random volume
``V / V_final`` uniform in ``volume_range``, a random traceless symmetric strain of
``shear_std`` per component and Gaussian displacements of ``rattle`` Å, and each copy is
labelled by the teacher (forces eV/Å, stress kBar tensile positive, energy eV).

:func:`build` writes the frames in resumable shards, joins them into ``strain.npz`` and makes a
dataset folder whose ``train.npz`` is the base dataset's training frames plus these, with the
base dataset's other splits linked unchanged (so test metrics stay comparable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
from pymatgen.core import Lattice, Structure

from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import sampling
from crystal_search.errors import InputError

#: Dataset files linked unchanged from the base dataset.
LINKED_SPLITS = ("val", "test", "test_trajectories", "holdout", "holdout_trajectories")
#: What is copied: ``finals`` the last structure of every training trajectory (needs the teacher
#: files), ``frames`` every frame of the base dataset's ``train.npz`` (or a seeded subset).
SOURCES = ("finals", "frames")


@dataclasses.dataclass(frozen=True)
class StrainConfig:
  """How the strained copies are drawn.

  Attributes:
    copies: strained copies per relaxed structure.
    volume_range: ``(low, high)`` of the uniform volume ratio ``V / V_final``.
    shear_std: std of each component of the random traceless symmetric strain.
    rattle: std (Å) of the Gaussian displacement of each Cartesian coordinate.
    seed: seed of the draws (each structure's draws also depend on its trajectory name).
  """

  copies: int = 5
  volume_range: tuple[float, float] = (0.88, 1.12)
  shear_std: float = 0.02
  rattle: float = 0.02
  seed: int = 0

  def check(self) -> None:
    """One-line :class:`InputError` for impossible values."""
    low, high = self.volume_range
    if self.copies < 1:
      raise InputError(f"copies {self.copies}: must be >= 1")
    if not 0 < low <= high:
      raise InputError(f"volume_range {self.volume_range}: need 0 < low <= high")
    if self.shear_std < 0 or self.rattle < 0:
      raise InputError(f"shear_std {self.shear_std}, rattle {self.rattle}: must be >= 0")


def strained_copies(structure: Structure, *, name: str, config: StrainConfig) -> list[Structure]:
  """``config.copies`` strained, rattled copies of ``structure`` (seeded by ``name``)."""
  digest = hashlib.sha256(f"{config.seed}:{name}".encode()).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
  low, high = config.volume_range
  out = []
  for _ in range(config.copies):
    eps = rng.normal(0.0, config.shear_std, (3, 3))
    eps = 0.5 * (eps + eps.T)
    eps -= np.trace(eps) / 3.0 * np.eye(3)
    deform = np.eye(3) + eps
    scale = rng.uniform(low, high) / np.linalg.det(deform)  # volume ratio exactly as drawn
    deform = deform * np.cbrt(scale)
    lattice = structure.lattice.matrix @ deform
    cart = structure.cart_coords @ deform + rng.normal(0.0, config.rattle, (len(structure), 3))
    out.append(Structure(Lattice(lattice), structure.species, cart, coords_are_cartesian=True))
  return out


def training_finals(teacher_paths: Sequence[str], manifest: dict) -> list[tuple[str, Structure]]:
  """``(trajectory name, last structure)`` of each training trajectory under the dataset's
  protocol (split seed and fractions, holdout, failed relaxations skipped)."""
  protocol = manifest["protocol"]
  holdout = set(protocol.get("holdout", ()))
  out = []
  for path, frames in sampling.iter_relaxations(sorted(teacher_paths)):
    meta = frames.metadata
    if len(frames) == 0 or (meta.get("failed") and protocol.get("skip_failed", True)):
      continue
    if sampling.formula_of(frames) in holdout:
      continue
    name = frames.trajectory_names[0] if frames.trajectory_names else meta.get("name", path)
    split = sampling.split_of(str(name), seed=protocol["seed"], fractions=protocol["fractions"])
    if split == "train":
      last = int(np.argmax(frames.step))
      out.append((str(name), frames.structure(last)))
  return out


def training_frames(
  train: frames_lib.Frames, *, max_sources: int = 0, seed: int = 0
) -> list[tuple[str, Structure]]:
  """``(name, structure)`` of the frames of a training set: all of them, or a seeded subset of
  ``max_sources`` (in file order); names are ``TRAJECTORY/step_STEP``."""
  index = np.arange(len(train))
  if 0 < max_sources < len(train):
    index = np.sort(np.random.default_rng(seed).choice(len(train), max_sources, replace=False))
  names = train.trajectory_names
  out = []
  for i in index:
    t = int(train.trajectory[i])
    out.append((f"{names[t] if names else t}/step_{int(train.step[i])}", train.structure(int(i))))
  return out


def label(
  structures: Sequence[Structure], names: Sequence[str], force_field, *, batch_size: int = 16
) -> frames_lib.Frames:
  """Teacher labels of ``structures`` as frames (``trajectory_names`` = ``names``)."""
  from crystal_search import crystals as crystals_lib

  rows = []
  for start in range(0, len(structures), batch_size):
    chunk = list(structures[start : start + batch_size])
    batch = crystals_lib.from_structures(chunk)
    out = force_field(batch)
    forces = np.asarray(out.forces, np.float64)
    stress = np.asarray(out.stress, np.float64)
    energy = np.asarray(out.energy, np.float64)
    for k, s in enumerate(chunk):
      rows.append(
        {
          "numbers": [site.specie.Z for site in s],
          "positions": s.frac_coords,
          "forces": forces[k, : len(s)],
          "lattice": s.lattice.matrix,
          "stress": stress[k],
          "energy": energy[k],
          "trajectory": start + k,
          "step": 0,
        }
      )
  return frames_lib.from_arrays(rows, trajectory_names=list(names))


def link_splits(dataset_dir: str, output_dir: str) -> list[str]:
  """Link ``dataset_dir``'s :data:`LINKED_SPLITS` files into ``output_dir`` (relative
  symlinks, replacing old ones; copies where the file system has no symlinks).  Returns the
  splits linked (those that exist)."""
  rel = os.path.relpath(os.path.abspath(dataset_dir), os.path.abspath(output_dir))
  linked = []
  for split in LINKED_SPLITS:
    target = os.path.join(dataset_dir, f"{split}.npz")
    if not os.path.exists(target):
      continue
    link = os.path.join(output_dir, f"{split}.npz")
    if os.path.lexists(link):
      os.remove(link)
    try:
      os.symlink(os.path.join(rel, f"{split}.npz"), link)
    except OSError:  # no symlinks (some file systems): copy
      shutil.copy2(target, link)
    linked.append(split)
  return linked


def build(
  teacher_paths: Sequence[str],
  dataset_dir: str,
  output_dir: str,
  *,
  force_field,
  config: StrainConfig = StrainConfig(),
  source: str = "finals",
  max_sources: int = 0,
  worker: tuple[int, int] = (0, 1),
  shard_size: int = 64,
  progress: bool = False,
  log: Callable[[str], None] | None = None,
) -> dict:
  """Label strained copies of the training finals (or frames) and write the dataset folder.

  ``source="finals"`` copies the last structure of every training trajectory among
  ``teacher_paths``; ``source="frames"`` copies every frame of ``DATASET/train.npz`` (a seeded
  subset of ``max_sources`` when > 0; no teacher files needed, only ``force_field``): teacher
  labels off the relaxation paths, around the frames the paper samples.  Shards of
  ``shard_size`` sources go to ``OUTPUT/shards/`` and a rerun skips the finished ones;
  ``worker=(k, n)`` makes only the shards ``k, k + n, ...`` so that ``n`` processes can share
  the labelling (each returns ``{"missing_shards": ...}`` until all are there; the last one to
  finish joins them).  An existing ``strain.npz`` (made with the same settings) is joined as
  it is, without labelling.  Returns the manifest.
  """
  config.check()
  if source not in SOURCES:
    raise InputError(f"source {source!r}: must be one of {SOURCES}")
  k, n = worker
  if not 0 <= k < n:
    raise InputError(f"worker {k} of {n}: need 0 <= worker < workers")
  manifest_path = os.path.join(dataset_dir, "manifest.json")
  if not os.path.exists(manifest_path):
    raise InputError(f"{manifest_path}: no such file (build the base dataset first)")
  with open(manifest_path) as f:
    base = json.load(f)
  os.makedirs(os.path.join(output_dir, "shards"), exist_ok=True)
  settings = {"strain": dataclasses.asdict(config), "protocol": base["protocol"]}
  if source != "finals":  # finals: the settings of the folders made before sources existed
    settings["source"] = {"kind": source, "max_sources": max_sources}
  settings_path = os.path.join(output_dir, "settings.json")
  if os.path.exists(settings_path):
    with open(settings_path) as f:
      if json.load(f) != json.loads(json.dumps(settings)):
        raise InputError(f"{output_dir}: holds strain frames made with other settings")
  else:
    with open(settings_path, "w") as f:
      json.dump(settings, f, indent=1)
  strain_path = os.path.join(output_dir, "strain.npz")
  train_path = os.path.join(dataset_dir, "train.npz")
  if not os.path.exists(train_path):
    raise InputError(f"{train_path}: no such file (build the base dataset first)")
  train = frames_lib.load(train_path)
  sources = None
  if os.path.exists(strain_path):
    pass  # made with these settings (checked above): joined as it is, nothing relabelled
  elif source == "finals" and teacher_paths:
    sources = training_finals(teacher_paths, base)
    if not sources:
      raise InputError("no training trajectories among the teacher files")
  elif source == "frames" and force_field is not None:
    sources = training_frames(train, max_sources=max_sources, seed=config.seed)
  if sources is not None:
    paths = {
      start: os.path.join(output_dir, "shards", f"strain_{start:05d}.npz")
      for start in range(0, len(sources), shard_size)
    }
    mine = [start for i, start in enumerate(paths) if i % n == k]
    iterator = mine
    if progress:
      from tqdm import tqdm

      iterator = tqdm(mine, desc="strain", unit="shard")
    for start in iterator:
      if os.path.exists(paths[start]):
        continue
      structures, names = [], []
      for name, s in sources[start : start + shard_size]:
        for c, copy in enumerate(strained_copies(s, name=name, config=config)):
          structures.append(copy)
          names.append(f"{name}/strain_{c}")
      tmp = paths[start][: -len(".npz")] + f".part{k}.npz"
      label(structures, names, force_field).save(tmp)
      os.replace(tmp, paths[start])  # a killed worker leaves no half-written shard
      if log is not None:
        log(f"{paths[start]}: {len(structures)} frames")
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
      if log is not None:
        log(f"{len(missing)} of {len(paths)} shards still missing (other workers): not joined")
      return {"missing_shards": len(missing)}
    strain = frames_lib.concatenate([frames_lib.load(paths[start]) for start in sorted(paths)])
    count_key = "relaxed_structures" if source == "finals" else "source_frames"
    strain.metadata = {"set": "strain", **settings, count_key: len(sources)}
    strain.save(strain_path)
  elif os.path.exists(strain_path):
    strain = frames_lib.load(strain_path)
  else:
    raise InputError(f"{strain_path}: no such file and no teacher to make it with")
  joined = frames_lib.concatenate([train, strain])
  joined.metadata = dict(train.metadata, strain=settings["strain"], strain_frames=len(strain))
  joined.save(os.path.join(output_dir, "train.npz"))
  rel = os.path.relpath(os.path.abspath(dataset_dir), os.path.abspath(output_dir))
  files = {"train": {"path": "train.npz", "frames": len(joined)}}
  for split in link_splits(dataset_dir, output_dir):
    files[split] = base["files"].get(split, {"path": f"{split}.npz"})
  manifest = {
    "protocol": base["protocol"],
    "base_dataset": rel,  # relative to this folder
    "base_train_frames": len(train),
    "strain": settings["strain"],
    "strain_frames": len(strain),
    "files": files,
  }
  if "source" in settings:
    manifest["source"] = settings["source"]
  with open(os.path.join(output_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest
