"""Training of the force/stress and energy models (the paper's protocol, section 3.3).

* **Loss**: the sum of the mean squared errors of the standardised forces and the
  standardised stresses (force/stress model), or of the standardised energy per
  atom (energy baseline).  Padding atoms and padding structures are masked out.
  ``loss='mae'`` takes mean absolute errors instead (ours, for fine-tuning: the
  tables report MAEs).
  The standardisation statistics come from the training set and live in the
  model variables (``set_normalization``) before the first step.
* **Optimiser**: Adam, learning rate ``1e-3`` halved every ``lr_halving_epochs``
  (15) epochs (a staircase ``optax.exponential_decay`` over steps).
* **Augmentation** (:mod:`crystal_search.augment`), drawn per epoch from
  ``(seed, epoch)``: 50 % of the structures rotated by 90 degrees, 30 % with
  Gaussian noise of ``noise_std`` Å on Cartesian positions and lattice vectors
  (the energy baseline's config sets the noise fraction to 0: rotations only).
* **Batches**: frames are grouped by atom-count bucket
  (:func:`crystal_search.crystals.bucket_size`) and cut into fixed-size batches,
  so ``train_step`` compiles once per bucket (padding structures fill the last
  batch of a bucket).  The neighbour capacity of each bucket is computed on the
  host from the data (with a margin); when the model reports an overflow the
  step is discarded inside the jitted step, the capacity grows and the batch is
  recomputed, so the model never trains on a truncated graph.
* **Early stopping** on the validation loss (``patience`` epochs), best and
  latest checkpoints with orbax every epoch, resumption from the latest one.
  The data order and augmentation depend only on ``(seed, epoch)``, so a killed
  and resumed run ends with the same parameters as an uninterrupted one.
* **Time budget** (``max_train_minutes``, 0 = none; for a lent accelerator): the run ends
  after the epoch in which its summed epoch time reaches the budget and exports its best
  model, as a finished run does (``stopped_on_budget`` in the model's metadata).  How many
  epochs that is depends on the machine; resumption still continues the same sequence.
* **Fine-tuning**: ``init_from`` names an exported model (:func:`crystal_search.models.io.
  save_model`) of the same kind and model config whose variables (parameters and
  normalisation statistics) replace the initialisation; the optimiser starts afresh.
* **Export**: the best model (by validation loss) is written with
  :func:`crystal_search.models.io.save_model` to ``workdir/model`` with its
  config, the dataset version and the test metrics.

Workdir layout::

    run.json            config, its hash, the dataset version (identifies the run)
    checkpoints/latest  orbax checkpoint of the last finished epoch
    checkpoints/best    orbax checkpoint of the best epoch (validation loss)
    metrics.csv         one row per epoch
    model/              the exported best model

Units: forces eV/Å, stress kBar, energy eV (per cell; per atom where named).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from crystal_search import augment
from crystal_search.crystals import Crystals, bucket_size
from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError

#: Model kinds the trainer knows.
MODEL_KINDS = ("force_stress", "energy")
#: Training losses (``config.loss``): mean squared or mean absolute standardised errors.
LOSSES = ("mse", "mae")
#: Training keys added after runs were hashed, left out of :func:`config_hash` (and of
#: :func:`extends`) at these values, so those runs keep their hashes.
HASH_NEUTRAL_KEYS = {"loss": "mse", "init_from": "", "max_train_minutes": 0.0}
#: Dataset splits read from ``config.data.path``.
REQUIRED_SPLITS = ("train", "val")
OPTIONAL_SPLITS = ("test", "holdout")

Log = Callable[[str], None]


# ----------------------------------------------------------------------------
# Configuration.


def get_default_config() -> ml_collections.ConfigDict:
  """Every key a training config may hold, with the paper's values.

  ``experiments/configs/*.py`` start from this; :func:`validate_config` refuses
  keys that are not here.
  """
  from crystal_search.models import config as model_config

  c = ml_collections.ConfigDict()
  c.scale = "paper"  # 'cpu' or 'paper': documents which budget the values are meant for.
  c.seed = 0
  c.model_kind = "force_stress"  # or 'energy' (the energy baseline)
  c.loss = "mse"  # 'mse' (the paper) or 'mae' (force/stress model only)
  c.init_from = ""  # exported model directory to start from ('' = random initialisation)
  c.model = model_config.get_model_config()

  c.data = ml_collections.ConfigDict()
  c.data.path = "data/dataset"  # folder with train.npz, val.npz, test.npz, holdout.npz
  c.data.holdout = ("Li15Si4",)  # reduced formulas never trained or validated on
  c.data.max_train_frames = 0  # 0: all; otherwise a seeded random subset
  c.data.max_eval_frames = 0  # 0: all; caps val/test/holdout frames (seeded subset)

  c.learning_rate = 1e-3
  c.lr_halving_epochs = 15
  c.num_epochs = 200
  c.patience = 30  # epochs without a better validation loss; 0 = no early stopping
  c.batch_size = 32
  c.eval_batch_size = 64
  c.grad_clip = 0.0  # global-norm clipping; 0 = off (the paper does not clip)

  c.augment = ml_collections.ConfigDict()
  c.augment.rotate_fraction = 0.5
  c.augment.noise_fraction = 0.3
  c.augment.noise_std = 0.01  # Å

  c.capacity_margin = 1.2  # neighbour capacity = margin * largest count in the data
  c.checkpoint_every_epochs = 1
  # Wall-clock budget (minutes, 0 = none): the run ends after the epoch in which the training
  # epochs' summed time (over all invocations, as in metrics.csv) reaches it, and exports its
  # best model as a finished run does.  The number of epochs then depends on the machine.
  c.max_train_minutes = 0.0
  return c


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raise :class:`InputError` (one line) for unknown keys or impossible values."""
  reference = _flatten(get_default_config().to_dict())
  given = _flatten(config.to_dict())
  unknown = sorted(set(given) - set(reference))
  if unknown:
    raise InputError(f"config: unknown key(s) {', '.join(unknown)}")
  missing = sorted(set(reference) - set(given))
  if missing:
    raise InputError(f"config: missing key(s) {', '.join(missing)}")

  def need(cond: bool, key: str, what: str) -> None:
    if not cond:
      raise InputError(f"config.{key}={given[key]!r}: {what}")

  need(given["scale"] in ("cpu", "paper"), "scale", "expected 'cpu' or 'paper'")
  need(given["model_kind"] in MODEL_KINDS, "model_kind", f"expected one of {MODEL_KINDS}")
  need(given["loss"] in LOSSES, "loss", f"expected one of {LOSSES}")
  need(
    given["loss"] == "mse" or given["model_kind"] == "force_stress",
    "loss",
    "the energy model trains on the mean squared error only",
  )
  need(isinstance(given["init_from"], str), "init_from", "must be a model directory or ''")
  for key in ("learning_rate",):
    need(isinstance(given[key], float | int) and given[key] > 0, key, "must be > 0")
  for key in ("num_epochs", "lr_halving_epochs", "batch_size", "eval_batch_size"):
    need(isinstance(given[key], int) and given[key] >= 1, key, "must be an integer >= 1")
  for key in ("patience", "data.max_train_frames", "data.max_eval_frames"):
    need(isinstance(given[key], int) and given[key] >= 0, key, "must be an integer >= 0")
  need(
    isinstance(given["max_train_minutes"], float | int) and given["max_train_minutes"] >= 0,
    "max_train_minutes",
    "must be >= 0 (0: no budget)",
  )
  need(given["checkpoint_every_epochs"] >= 1, "checkpoint_every_epochs", "must be >= 1")
  need(given["grad_clip"] >= 0, "grad_clip", "must be >= 0")
  need(given["capacity_margin"] >= 1.0, "capacity_margin", "must be >= 1")
  for key in ("augment.rotate_fraction", "augment.noise_fraction"):
    need(0.0 <= given[key] <= 1.0, key, "must lie in [0, 1]")
  need(given["augment.noise_std"] >= 0.0, "augment.noise_std", "must be >= 0 (Å)")
  need(given["model.cutoff"] > 0, "model.cutoff", "must be > 0 (Å)")
  need(bool(given["data.path"]), "data.path", "must name the dataset folder")
  from crystal_search.models import config as model_config

  model_config.validate_config(config.model)


def config_hash(config: ml_collections.ConfigDict) -> str:
  """A stable short hash of the whole config (identifies a run in a workdir).

  Model keys added after runs were hashed (``models.config.HASH_NEUTRAL_KEYS``) count only when
  they differ from the value those runs were built with, so existing runs, exports and archived
  evaluations keep their hashes.
  """
  text = json.dumps(_hashed(config.to_dict()), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hashed(d: dict) -> dict:
  """A config dict without the keys added after runs were hashed, where they hold the value
  those runs were built with (``HASH_NEUTRAL_KEYS``, ``models.config.HASH_NEUTRAL_KEYS``)."""
  from crystal_search.models import config as model_config

  d = {k: v for k, v in d.items() if not (k in HASH_NEUTRAL_KEYS and v == HASH_NEUTRAL_KEYS[k])}
  if isinstance(d.get("model"), dict):
    model = dict(d["model"])
    for key, value in model_config.HASH_NEUTRAL_KEYS.items():
      if key in model and model[key] == value:
        del model[key]
    d["model"] = model
  return d


# ----------------------------------------------------------------------------
# Data.


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


# ----------------------------------------------------------------------------
# Losses and schedule.


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over the entries where ``mask`` is True.

  Args:
    pred: ``[B, ...]`` any shape.
    target: same shape as ``pred``.
    mask: broadcastable to ``pred`` (e.g. ``[B, N, 1]`` for ``[B, N, 3]``), bool.

  Returns:
    ``sum(mask * (pred - target)^2) / count``, 0 when nothing is selected.
  """
  mask = jnp.broadcast_to(mask, pred.shape)
  sq = jnp.where(mask, (pred - target) ** 2, 0.0)
  return jnp.sum(sq) / jnp.maximum(jnp.sum(mask), 1)


def masked_mae(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean absolute error over the entries where ``mask`` is True (shapes as
  :func:`masked_mse`); 0 when nothing is selected."""
  mask = jnp.broadcast_to(mask, pred.shape)
  err = jnp.where(mask, jnp.abs(pred - target), 0.0)
  return jnp.sum(err) / jnp.maximum(jnp.sum(mask), 1)


def force_stress_loss(
  forces_pred: jax.Array,
  stress_pred: jax.Array,
  forces_target: jax.Array,
  stress_target: jax.Array,
  atom_mask: jax.Array,
  *,
  loss: str = "mse",
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """The paper's loss: MSE of standardised forces + MSE of standardised stresses
  (``loss='mae'``: the same with mean absolute errors).

  Args:
    forces_pred, forces_target: ``[B, N, 3]`` standardised forces.
    stress_pred, stress_target: ``[B, 3, 3]`` standardised stresses.
    atom_mask: ``[B, N]`` bool, real atoms (structures with none are padding).
    loss: ``'mse'`` or ``'mae'``.

  Returns:
    ``(loss, (force_term, stress_term))``.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss {loss!r}: expected one of {LOSSES}")
  error = masked_mse if loss == "mse" else masked_mae
  structure_mask = jnp.any(atom_mask, axis=1)
  f = error(forces_pred, forces_target, atom_mask[..., None])
  s = error(stress_pred, stress_target, structure_mask[:, None, None])
  return f + s, (f, s)


def lr_schedule(
  *, learning_rate: float, halving_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
  """``learning_rate * 0.5 ** floor(step / (halving_epochs * steps_per_epoch))``."""
  return optax.exponential_decay(
    init_value=learning_rate,
    transition_steps=max(1, halving_epochs * steps_per_epoch),
    decay_rate=0.5,
    staircase=True,
  )


# ----------------------------------------------------------------------------
# Model adapters: one interface over the force/stress model and the energy model.


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
  """What the trainer needs from a model kind.

  Attributes:
    kind: ``'force_stress'`` or ``'energy'``.
    config: the model config.
    loss_kind: ``config.loss`` of the run (``'mse'`` or ``'mae'``).
    init: ``(rng, crystals) -> variables``.
    set_normalization: ``(variables, stats) -> variables``.
    loss: ``(variables, batch, capacity) -> (loss, aux)`` with ``aux`` a dict of
      per-batch sums (see :func:`_force_stress_loss`) and ``overflow`` (bool).
  """

  kind: str
  config: ml_collections.ConfigDict
  init: Callable[[jax.Array, Crystals], dict]
  set_normalization: Callable[[dict, dict], dict]
  loss: Callable[[dict, Batch, int], tuple[jax.Array, dict]]
  metric_names: tuple[str, ...]
  loss_kind: str = "mse"


def _force_stress_adapter(
  model_config: ml_collections.ConfigDict, loss_kind: str = "mse"
) -> ModelAdapter:
  from crystal_search.models import force_stress

  def init(rng, crystals):
    return force_stress.init(model_config, rng, crystals)

  def set_norm(variables, stats):
    return force_stress.set_normalization(
      variables,
      force_mean=stats["force_mean"],
      force_std=stats["force_std"],
      stress_mean=stats["stress_mean"],
      stress_std=stats["stress_std"],
    )

  def loss(variables, batch, capacity):
    pred = force_stress.apply(model_config, variables, batch.crystals, capacity=capacity)
    fn, sn = force_stress.normalize_targets(variables, batch.forces, batch.stress)
    mask = batch.crystals.mask
    value, (f_term, s_term) = force_stress_loss(
      pred.forces_normalized, pred.stress_normalized, fn, sn, mask, loss=loss_kind
    )
    structure = jnp.any(mask, axis=1)
    n_atoms = jnp.sum(mask)
    n_struct = jnp.sum(structure)
    f_err = jnp.where(mask[..., None], pred.forces - batch.forces, 0.0)
    s_err = jnp.where(structure[:, None, None], pred.stress - batch.stress, 0.0)
    fn_err = jnp.where(mask[..., None], pred.forces_normalized - fn, 0.0)
    sn_err = jnp.where(structure[:, None, None], pred.stress_normalized - sn, 0.0)
    aux = {
      "force_loss": f_term,
      "stress_loss": s_term,
      # Sums for dataset-level metrics.
      "force_abs_sum": jnp.sum(jnp.abs(f_err)),
      "force_count": 3 * n_atoms,
      "stress_abs_sum": jnp.sum(jnp.abs(s_err)),
      "stress_count": 9 * n_struct,
      "force_sq_sum": jnp.sum(fn_err**2),
      "stress_sq_sum": jnp.sum(sn_err**2),
      # The training loss's terms as sums (each term is its sum over its count).
      "force_loss_sum": f_term * (3 * n_atoms),
      "stress_loss_sum": s_term * (9 * n_struct),
      "overflow": jnp.any(pred.overflow),
    }
    return value, aux

  return ModelAdapter(
    kind="force_stress",
    config=model_config,
    init=init,
    set_normalization=set_norm,
    loss=loss,
    metric_names=("force_mae", "stress_mae"),
    loss_kind=loss_kind,
  )


def _energy_adapter(model_config: ml_collections.ConfigDict) -> ModelAdapter:
  from crystal_search.models import energy as energy_model

  def init(rng, crystals):
    return energy_model.init(model_config, rng, crystals)

  def set_norm(variables, stats):
    if not np.isfinite(stats["energy_mean"]):
      raise InputError("the energy model needs energies, but the training set has none")
    return energy_model.set_normalization(
      variables, energy_mean=stats["energy_mean"], energy_std=stats["energy_std"]
    )

  def loss(variables, batch, capacity):
    pred = energy_model.apply(model_config, variables, batch.crystals, capacity=capacity)
    n = batch.crystals.n_atoms
    real = n > 0
    std = variables["normalization"]["energy_std"]
    per_atom_err = (pred.energy - batch.energy) / jnp.maximum(n, 1)
    err_n = jnp.where(real, per_atom_err / std, 0.0)
    value = jnp.sum(err_n**2) / jnp.maximum(jnp.sum(real), 1)
    aux = {
      "energy_mse": value,
      "energy_abs_sum": jnp.sum(jnp.where(real, jnp.abs(per_atom_err), 0.0)),
      "energy_count": jnp.sum(real),
      "energy_sq_sum": jnp.sum(err_n**2),
      "overflow": jnp.any(pred.overflow),
    }
    return value, aux

  return ModelAdapter(
    kind="energy",
    config=model_config,
    init=init,
    set_normalization=set_norm,
    loss=loss,
    metric_names=("energy_mae",),
  )


def model_adapter(config: ml_collections.ConfigDict) -> ModelAdapter:
  """The adapter for ``config.model_kind``."""
  if config.model_kind == "force_stress":
    return _force_stress_adapter(config.model, str(config.get("loss", "mse")))
  if config.model_kind == "energy":
    return _energy_adapter(config.model)
  raise InputError(f"config.model_kind={config.model_kind!r}: expected one of {MODEL_KINDS}")


def dataset_metrics(kind: str, sums: dict[str, float]) -> dict[str, float]:
  """Dataset-level metrics from summed batch outputs.

  ``force_stress``: ``loss`` (the training loss: standardised MSE, or MAE, sum), ``force_mae`` (eV/Å over
  components), ``stress_mae`` (kBar over 9 components).  ``energy``: ``loss``,
  ``energy_mae`` (eV/atom).
  """

  def div(a, b):
    return float(sums[a]) / float(sums[b]) if sums.get(b) else float("nan")

  if kind == "force_stress":
    return {
      "loss": div("force_loss_sum", "force_count") + div("stress_loss_sum", "stress_count"),
      "force_mae": div("force_abs_sum", "force_count"),
      "stress_mae": div("stress_abs_sum", "stress_count"),
    }
  return {
    "loss": div("energy_sq_sum", "energy_count"),
    "energy_mae": div("energy_abs_sum", "energy_count"),
  }


# ----------------------------------------------------------------------------
# State and steps.


class TrainState(train_state.TrainState):
  """Flax train state plus the (untrained) normalisation statistics of the model."""

  normalization: Any = None

  def variables(self) -> dict:
    return {"params": self.params, "normalization": self.normalization}


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """``(tx, schedule)``: Adam with the halving schedule (and optional global-norm clipping).

  Cached per setting: the optimizer is a static part of :class:`TrainState`, so
  reusing one object lets repeated runs in a process share compiled steps.
  """
  return _optimizer(
    float(config.learning_rate),
    int(config.lr_halving_epochs),
    int(steps_per_epoch),
    float(config.grad_clip),
  )


@functools.lru_cache(maxsize=64)
def _optimizer(learning_rate: float, halving_epochs: int, steps_per_epoch: int, grad_clip: float):
  schedule = lr_schedule(
    learning_rate=learning_rate, halving_epochs=halving_epochs, steps_per_epoch=steps_per_epoch
  )
  tx = optax.adam(schedule)
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx, schedule


def _canonical(tree):
  """Strongly typed jax arrays committed to the default device everywhere (a fresh, a stepped
  and a restored state then share one jit cache entry instead of recompiling)."""
  device = jax.devices()[0]
  return jax.tree_util.tree_map(
    lambda x: jax.device_put(jnp.array(x, dtype=jnp.result_type(x)), device), tree
  )


def create_train_state(variables: dict, tx) -> TrainState:
  """A fresh state from initialised (and normalised) model variables."""
  state = TrainState.create(
    apply_fn=None, params=variables["params"], tx=tx, normalization=variables["normalization"]
  )
  return _canonical(state.replace(step=jnp.zeros((), jnp.int32)))


_STEPS_CACHE: dict[tuple[str, str, str], tuple[Callable, Callable]] = {}


def make_steps(adapter: ModelAdapter):
  """Jitted ``(train_step, eval_step)`` for a model kind (cached per kind and model config).

  ``train_step(state, batch, capacity) -> (state, aux)``: one Adam step; when
  the model reports a neighbour overflow or the loss is not finite, the state
  is returned unchanged (``aux['skipped']``) so that the caller can grow the
  capacity and redo the batch.  The input state is donated.
  ``eval_step(state, batch, capacity) -> aux`` (loss sums for metrics).
  ``capacity`` is static: one compilation per (bucket, capacity).
  """

  def loss_fn(params, state, batch, capacity):
    variables = {"params": params, "normalization": state.normalization}
    return adapter.loss(variables, batch, capacity)

  def train_step(state, batch, capacity):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state, batch, capacity
    )
    skip = aux["overflow"] | ~jnp.isfinite(loss)
    new_state = state.apply_gradients(grads=grads)
    new_state = jax.tree_util.tree_map(lambda old, new: jnp.where(skip, old, new), state, new_state)
    aux = dict(aux, loss=loss, skipped=skip)
    return new_state, aux

  def eval_step(state, batch, capacity):
    loss, aux = loss_fn(state.params, state, batch, capacity)
    return dict(aux, loss=loss)

  key = (
    adapter.kind,
    adapter.loss_kind,
    json.dumps(adapter.config.to_dict(), sort_keys=True, default=str),
  )
  if key not in _STEPS_CACHE:
    _STEPS_CACHE[key] = (
      jax.jit(train_step, static_argnums=(2,), donate_argnums=(0,)),
      jax.jit(eval_step, static_argnums=(2,)),
    )
  return _STEPS_CACHE[key]


_INIT_CACHE: dict[tuple, Any] = {}


def _initial_variables(adapter: ModelAdapter, seed: int, crystals: Crystals) -> dict:
  """``adapter.init(PRNGKey(seed), crystals)``, remembered per model config, seed and shapes
  (initialisation compiles the graph builder; runs repeated in one process skip that)."""
  key = (
    adapter.kind,
    json.dumps(adapter.config.to_dict(), sort_keys=True, default=str),
    int(seed),
    tuple(crystals.positions.shape),
  )
  if key not in _INIT_CACHE:
    variables = adapter.init(jax.random.PRNGKey(seed), crystals)
    _INIT_CACHE.clear()  # keep one entry: only repeated identical runs benefit
    _INIT_CACHE[key] = jax.device_get(variables)
  return _INIT_CACHE[key]


#: Growths of a bucket's edge capacity (x1.5 each) before an overflow is an error: the capacity
#: starts at the data's largest count plus a margin, so more growth means something else.
MAX_CAPACITY_GROWTHS = 4


def _grow(capacity: int) -> int:
  return int(math.ceil(capacity * 1.5)) + 8


def _overflow_message(bucket: int) -> str:
  return (
    f"neighbour lists of bucket {bucket} still overflow after {MAX_CAPACITY_GROWTHS} capacity "
    "growths: a cell thinner than the model's periodic image range (model.max_images), or "
    "atoms collapsed onto each other"
  )


def evaluate_frames(
  eval_step,
  state: TrainState,
  frames: frames_lib.Frames,
  *,
  kind: str,
  batch_size: int,
  capacities: dict[int, int],
  log: Log | None = None,
) -> dict[str, float]:
  """Metrics of ``state`` on every frame of a set (:func:`dataset_metrics`).

  ``capacities`` is updated in place when a bucket overflows (the batch is then
  recomputed with the larger capacity).
  """
  sums: dict[str, float] = {}
  for bucket, idx in bucket_batches(frames.n_atoms, batch_size=batch_size):
    batch = make_batch(frames, idx, max_atoms=bucket, batch_size=batch_size)
    for _ in range(MAX_CAPACITY_GROWTHS + 1):
      cap = capacities.setdefault(bucket, 64)
      aux = jax.device_get(eval_step(state, batch, cap))
      if not aux["overflow"]:
        break
      capacities[bucket] = _grow(cap)
      if log:
        log(f"neighbour capacity of bucket {bucket} grown {cap} -> {capacities[bucket]}")
    else:
      raise RuntimeError(_overflow_message(bucket))
    for k, v in aux.items():
      if k.endswith(("_sum", "_count")):
        sums[k] = sums.get(k, 0.0) + float(v)
  return dataset_metrics(kind, sums)


def load_init_from(config: ml_collections.ConfigDict) -> dict | None:
  """The exported model ``config.init_from`` names, checked against the config (None when
  ``init_from`` is empty).

  Returns:
    ``{'path', 'variables', 'config_hash', 'data_version', 'variables_sha256'}``: the model's
    variables (numpy) and its provenance (the hash and data version of the run that trained
    it, from its ``model.json``; a digest of its parameters).

  Raises:
    InputError: one line when the directory is not a model, holds another kind of model, or a
      model whose config differs from ``config.model``.
  """
  path = str(config.init_from)
  if not path:
    return None
  from crystal_search.models import config as model_config
  from crystal_search.models import io as model_io

  try:
    kind, saved, variables, metadata = model_io.load_model(path)
  except InputError as e:
    raise InputError(f"config.init_from: {e}") from None
  if kind != config.model_kind:
    raise InputError(
      f"config.init_from={path!r}: a {kind} model, but config.model_kind is {config.model_kind!r}"
    )
  want = model_config.from_dict(config.model.to_dict()).to_dict()
  have = saved.to_dict()
  differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
  if differ:
    raise InputError(
      f"config.init_from={path!r}: its model config differs in {', '.join(differ)} "
      f"(e.g. {differ[0]}: model {have.get(differ[0])!r}, config {want.get(differ[0])!r})"
    )
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(variables):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return {
    "path": path,
    "variables": variables,
    "config_hash": metadata.get("config_hash"),
    "data_version": metadata.get("data_version"),
    "variables_sha256": digest.hexdigest()[:16],
  }


# ----------------------------------------------------------------------------
# Checkpoints.


class Checkpoints:
  """The latest and the best checkpoint of a run (orbax, one of each kept).

  Each holds the train state and a JSON ``meta`` (epoch, best validation loss,
  early-stopping counter, neighbour capacities).
  """

  def __init__(self, directory: str):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True, enable_async_checkpointing=False
    )
    self.latest = ocp.CheckpointManager(
      os.path.join(os.path.abspath(directory), "latest"),
      options=options,
      item_names=("state", "meta"),
    )
    self.best = ocp.CheckpointManager(
      os.path.join(os.path.abspath(directory), "best"),
      options=options,
      item_names=("state", "meta"),
    )

  def save(self, state: TrainState, meta: dict, *, best: bool) -> None:
    ocp = self._ocp
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    epoch = int(meta["epoch"])
    self.latest.save(epoch, args=args, force=True)
    if best:
      args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
      self.best.save(epoch, args=args, force=True)
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def _restore(self, manager, target: TrainState) -> tuple[TrainState, dict] | None:
    ocp = self._ocp
    step = manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    out = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return _canonical(out["state"]), dict(out["meta"])

  def restore_latest(self, target: TrainState) -> tuple[TrainState, dict] | None:
    return self._restore(self.latest, target)

  def restore_best(self, target: TrainState) -> tuple[TrainState, dict] | None:
    return self._restore(self.best, target)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


# ----------------------------------------------------------------------------
# The run directory.

_RUN_FILE = "run.json"
_METRICS_FILE = "metrics.csv"


def extends(previous: dict | None, config: dict) -> bool:
  """Whether ``config`` (a config dict) is the run ``previous`` (its config dict) trained for
  more epochs: every key equal except a larger or equal ``num_epochs``.  The learning-rate
  staircase halves every ``lr_halving_epochs`` whatever the total, so the first epochs of the
  longer run are the shorter run's."""
  if not isinstance(previous, dict) or not isinstance(config, dict):
    return False
  old, new = _hashed(previous), _hashed(config)
  old_epochs, new_epochs = old.pop("num_epochs", None), new.pop("num_epochs", None)
  if old_epochs is None or new_epochs is None or int(new_epochs) < int(old_epochs):
    return False
  old_budget = float(old.pop("max_train_minutes", 0.0) or 0.0)
  new_budget = float(new.pop("max_train_minutes", 0.0) or 0.0)
  if old_budget and new_budget and new_budget < old_budget:
    return False
  return json.dumps(old, sort_keys=True, default=str) == json.dumps(
    new, sort_keys=True, default=str
  )


def prepare_workdir(
  workdir: str,
  *,
  config_digest: str,
  data_version: str,
  overwrite: bool,
  config: dict | None = None,
  extend: bool = False,
) -> bool:
  """Check (or claim) a workdir for a run; returns True when it resumes a previous one.

  With ``extend``, a run in the workdir whose config is ``config`` (a config dict) with fewer
  epochs (:func:`extends`) on the same data is resumed as this run's first epochs.

  Raises:
    InputError: the workdir holds another run (different config hash or data
      version, or checkpoints without a ``run.json``) and ``overwrite`` is
      False.
  """
  run_file = os.path.join(workdir, _RUN_FILE)
  has_ckpt = os.path.isdir(os.path.join(workdir, "checkpoints"))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir {workdir}: exists and is not a directory")
  if os.path.exists(run_file) or has_ckpt:
    previous = {}
    if os.path.exists(run_file):
      with open(run_file) as f:
        previous = json.load(f)
    same = (
      previous.get("config_hash") == config_digest and previous.get("data_version") == data_version
    )
    if (
      not same
      and extend
      and not overwrite
      and previous.get("data_version") == data_version
      and extends(previous.get("config"), config)
    ):
      return True
    if not same and not overwrite:
      if not previous:
        why = "checkpoints of an unknown run"
      elif previous.get("config_hash") != config_digest:
        why = f"a run with a different config (hash {previous.get('config_hash')}, this one {config_digest})"
      else:
        why = (
          f"a run on different data (version {previous.get('data_version')}, now {data_version})"
        )
      raise InputError(f"--workdir {workdir}: holds {why}; pass --overwrite or use another workdir")
    if not same or overwrite:
      for name in ("checkpoints", "model", "tensorboard"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
      for name in (_RUN_FILE, _METRICS_FILE):
        if os.path.exists(os.path.join(workdir, name)):
          os.remove(os.path.join(workdir, name))
      return False
    return True
  return False


def _write_json(path: str, data: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, default=str)
  os.replace(tmp, path)


class _MetricsLog:
  """``metrics.csv`` (one row per epoch) and TensorBoard if ``tensorboardX`` is installed."""

  def __init__(self, workdir: str, columns: Sequence[str], *, resume_epoch: int):
    self.path = os.path.join(workdir, _METRICS_FILE)
    self.columns = list(columns)
    rows = []
    if resume_epoch > 0 and os.path.exists(self.path):
      with open(self.path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
    with open(self.path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=self.columns)
      writer.writeheader()
      writer.writerows(rows)
    self.writer = None
    try:
      from tensorboardX import SummaryWriter  # optional

      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      pass

  def write(self, row: dict) -> None:
    with open(self.path, "a", newline="") as f:
      csv.DictWriter(f, fieldnames=self.columns).writerow(row)
    if self.writer is not None:
      for k, v in row.items():
        if k != "epoch" and isinstance(v, int | float):
          self.writer.add_scalar(k, v, row["epoch"])
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The rows of ``workdir/metrics.csv`` as floats."""
  with open(os.path.join(workdir, _METRICS_FILE)) as f:
    return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` did.

  Attributes:
    epochs: epochs finished (over all invocations of the run).
    best_epoch: epoch of the best validation loss.
    best_val: validation metrics of the best epoch.
    test: metrics of the best model per evaluated split (``test``, ``holdout``).
    model_dir: the exported model (None when the run was interrupted).
    resumed_from: epoch the run resumed from (0 for a fresh run).
    stopped_early: True when early stopping ended the run.
    capacities: final neighbour capacity per bucket.
    params: the final (last-epoch) parameters.
  """

  epochs: int
  best_epoch: int
  best_val: dict[str, float]
  test: dict[str, dict[str, float]]
  model_dir: str | None
  resumed_from: int
  stopped_early: bool
  capacities: dict[int, int]
  params: Any = None


def _epoch_batches(frames: frames_lib.Frames, config: ml_collections.ConfigDict, epoch: int):
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


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  overwrite: bool = False,
  extend: bool = False,
  stop_after: int | None = None,
  progress: bool = True,
  log: Log | None = None,
) -> TrainResult:
  """Train (or resume training) a model as configured; export the best one.

  Args:
    config: a training config (:func:`get_default_config` keys).
    workdir: run directory (created; see module docstring).
    overwrite: replace another run's files in ``workdir`` instead of refusing.
    extend: continue a finished or stopped run in ``workdir`` whose config is this one with
      fewer ``num_epochs`` (same data), e.g. the 45-epoch shipped run as the first 45 epochs of
      a 75-epoch one; ``run.json`` then records this config and ``extended_from``.
    stop_after: stop, as if killed, after this many epochs of this invocation
      (the run is left resumable and nothing is exported).
    progress: show a tqdm bar per epoch.
    log: receives one-line progress messages.

  Raises:
    InputError: bad config, dataset or workdir (before any training).
  """
  log = log or (lambda _: None)
  validate_config(config)
  start_from = load_init_from(config)
  # Frame subsets (data.max_*_frames) do not depend on the training seed: every run of a
  # seed sweep sees the same frames.
  dataset = load_dataset(
    config.data,
    elements=tuple(config.model.elements),
    seed=0,
    log=log,
    cutoff=float(config.model.cutoff),
    max_images=int(config.model.max_images),
  )
  digest = config_hash(config)
  os.makedirs(workdir, exist_ok=True)
  run_file = os.path.join(workdir, _RUN_FILE)
  previous_run = {}
  if os.path.exists(run_file):
    with open(run_file) as f:
      previous_run = json.load(f)
  resuming = prepare_workdir(
    workdir,
    config_digest=digest,
    data_version=dataset.version,
    overwrite=overwrite,
    config=config.to_dict(),
    extend=extend,
  )
  record = {
    "config_hash": digest,
    "data_version": dataset.version,
    "data_path": dataset.path,
    "config": config.to_dict(),
  }
  extended = resuming and previous_run.get("config_hash") != digest
  if extended:
    record["extended_from"] = {
      "config_hash": previous_run.get("config_hash"),
      "num_epochs": previous_run.get("config", {}).get("num_epochs"),
    }
  elif resuming and "extended_from" in previous_run:
    record["extended_from"] = previous_run["extended_from"]
  if start_from is not None:
    record["init_from"] = {
      k: start_from[k] for k in ("path", "config_hash", "data_version", "variables_sha256")
    }
  _write_json(run_file, record)
  train_frames = dataset.splits["train"]
  val_frames = dataset.splits["val"]
  adapter = model_adapter(config)
  log(
    f"data {dataset.path} (version {dataset.version}): "
    + ", ".join(f"{k} {len(v)} frames" for k, v in dataset.splits.items())
  )

  # Normalisation, model, optimiser.
  stats = normalization_stats(train_frames)
  steps_per_epoch = len(bucket_batches(train_frames.n_atoms, batch_size=config.batch_size))
  tx, schedule = make_optimizer(config, steps_per_epoch)
  first_bucket, first_idx = bucket_batches(train_frames.n_atoms, batch_size=config.batch_size)[0]
  example = make_batch(
    train_frames, first_idx, max_atoms=first_bucket, batch_size=config.batch_size
  )
  if start_from is not None:
    variables = start_from["variables"]
    log(
      f"starting from {config.init_from} (config hash {start_from['config_hash']}); "
      "its normalisation statistics are kept"
    )
  else:
    variables = _initial_variables(adapter, config.seed, example.crystals)
    variables = adapter.set_normalization(variables, stats)
  state = create_train_state(variables, tx)
  train_step, eval_step = make_steps(adapter)

  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
  meta = {
    "epoch": 0,
    "best_val_loss": None,
    "best_epoch": 0,
    "epochs_since_best": 0,
    "capacities": None,
    "finished": False,
    "stopped_early": False,
    "train_seconds": 0.0,
    "stopped_on_budget": False,
  }
  restored = checkpoints.restore_latest(state) if resuming else None
  if restored is not None:
    state, meta = restored
    log(f"resuming from epoch {meta['epoch']} in {workdir}")
    meta.setdefault("train_seconds", 0.0)
    meta.setdefault("stopped_on_budget", False)
    if extended and int(meta["epoch"]) < config.num_epochs and not meta["stopped_early"]:
      if not meta["stopped_on_budget"] or not _budget_spent(config, meta):
        meta["finished"] = False
        meta["stopped_on_budget"] = False
        log(f"extending the run to {config.num_epochs} epochs")
  resumed_from = int(meta["epoch"])
  if meta["capacities"]:
    capacities = {int(k): int(v) for k, v in meta["capacities"].items()}
  else:
    capacities = neighbour_capacities(
      list(dataset.splits.values()),
      cutoff=float(config.model.cutoff),
      margin=config.capacity_margin,
    )
    log(f"neighbour capacity per bucket (edges per structure): {capacities}")

  columns = ["epoch", "step", "learning_rate", "train_loss"]
  columns += ["val_loss"] + [f"val_{m}" for m in adapter.metric_names]
  columns += ["skipped_steps", "seconds"]
  metrics_log = _MetricsLog(workdir, columns, resume_epoch=resumed_from)

  epochs_run = 0
  try:
    epoch = int(meta["epoch"])
    while not meta["finished"] and epoch < config.num_epochs:
      if stop_after is not None and epochs_run >= stop_after:
        break
      epoch += 1
      start = time.time()
      losses, skipped = [], 0
      bar = None
      if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", leave=False)
      for bucket, batch in _epoch_batches(train_frames, config, epoch):
        for _ in range(MAX_CAPACITY_GROWTHS + 1):
          cap = capacities.setdefault(bucket, 64)
          state, aux = train_step(state, batch, cap)
          aux = jax.device_get(aux)
          if not aux["overflow"]:
            break
          capacities[bucket] = _grow(cap)
          log(
            f"neighbour capacity of bucket {bucket} grown {cap} -> {capacities[bucket]} "
            "(overflow); recompiling"
          )
        else:
          raise RuntimeError(_overflow_message(bucket))
        if aux["skipped"]:
          skipped += 1
          log(f"epoch {epoch}: non-finite loss, step skipped")
        else:
          losses.append(float(aux["loss"]))
        if bar is not None:
          bar.update(1)
          bar.set_postfix(loss=f"{losses[-1]:.4f}" if losses else "nan")
      if bar is not None:
        bar.close()
      val = evaluate_frames(
        eval_step,
        state,
        val_frames,
        kind=adapter.kind,
        batch_size=config.eval_batch_size,
        capacities=capacities,
        log=log,
      )
      improved = meta["best_val_loss"] is None or val["loss"] < meta["best_val_loss"]
      if improved:
        meta["best_val_loss"] = val["loss"]
        meta["best_epoch"] = epoch
        meta["best_val"] = val
        meta["epochs_since_best"] = 0
      else:
        meta["epochs_since_best"] += 1
      meta["epoch"] = epoch
      meta["capacities"] = {str(k): v for k, v in capacities.items()}
      if config.patience and meta["epochs_since_best"] >= config.patience:
        meta["finished"] = True
        meta["stopped_early"] = True
      if epoch >= config.num_epochs:
        meta["finished"] = True
      seconds = round(time.time() - start, 3)
      meta["train_seconds"] = float(meta["train_seconds"]) + seconds
      if not meta["finished"] and _budget_spent(config, meta):
        meta["finished"] = True
        meta["stopped_on_budget"] = True
      row = {
        "epoch": epoch,
        "step": int(state.step),
        "learning_rate": float(schedule(int(state.step) - 1)),
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "val_loss": val["loss"],
        **{f"val_{m}": val[m] for m in adapter.metric_names},
        "skipped_steps": skipped,
        "seconds": seconds,
      }
      # The row first: a run killed before its checkpoint is written resumes from the previous
      # one and drops the rows after it.
      metrics_log.write(row)
      if improved or epoch % config.checkpoint_every_epochs == 0 or meta["finished"]:
        checkpoints.save(state, meta, best=improved)
      epochs_run += 1
      log(
        f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val['loss']:.4f}, "
        + ", ".join(f"{m} {val[m]:.4f}" for m in adapter.metric_names)
        + (" (best)" if improved else "")
      )
    interrupted = not meta["finished"] and epoch < config.num_epochs
    if interrupted:
      return TrainResult(
        epochs=int(meta["epoch"]),
        best_epoch=int(meta["best_epoch"]),
        best_val=dict(meta.get("best_val") or {}),
        test={},
        model_dir=None,
        resumed_from=resumed_from,
        stopped_early=False,
        capacities=capacities,
        params=state.params,
      )
    if meta["stopped_early"]:
      log(f"early stopping after epoch {meta['epoch']} (best epoch {meta['best_epoch']})")
    if meta.get("stopped_on_budget"):
      log(
        f"time budget of {config.max_train_minutes} min spent after epoch {meta['epoch']} "
        f"({meta['train_seconds'] / 60:.1f} min of training; best epoch {meta['best_epoch']})"
      )
    model_dir = os.path.join(workdir, "model")
    exported = _exported_metadata(model_dir, digest, dataset.version) if epochs_run == 0 else None
    if exported is not None:
      # A finished run called again: its model stands (re-exporting would make every evaluation
      # of it look stale to experiments.reproduce).
      test_metrics = dict(exported.get("test_metrics") or {})
      log(f"run already finished: model in {model_dir}")
    else:
      # Export the best model with its test metrics.
      best = checkpoints.restore_best(state)
      best_state = best[0] if best is not None else state
      test_metrics = {}
      for name in OPTIONAL_SPLITS:
        if name in dataset.splits:
          test_metrics[name] = evaluate_frames(
            eval_step,
            best_state,
            dataset.splits[name],
            kind=adapter.kind,
            batch_size=config.eval_batch_size,
            capacities=capacities,
            log=log,
          )
          log(f"best model on {name}: {test_metrics[name]}")
      export_model(
        model_dir,
        adapter=adapter,
        state=best_state,
        metadata={
          "data_version": dataset.version,
          "data_path": dataset.path,
          "config_hash": digest,
          "training_config": config.to_dict(),
          "best_epoch": int(meta["best_epoch"]),
          "epochs": int(meta["epoch"]),
          "stopped_early": bool(meta["stopped_early"]),
          "stopped_on_budget": bool(meta.get("stopped_on_budget", False)),
          "train_minutes": round(float(meta.get("train_seconds", 0.0)) / 60, 2),
          "val_metrics": dict(meta.get("best_val") or {}),
          "test_metrics": test_metrics,
          "normalization": {k: float(v) for k, v in stats.items()},
          "holdout": list(config.data.holdout),
        },
      )
      log(f"exported the best model (epoch {meta['best_epoch']}) to {model_dir}")
    return TrainResult(
      epochs=int(meta["epoch"]),
      best_epoch=int(meta["best_epoch"]),
      best_val=dict(meta.get("best_val") or {}),
      test=test_metrics,
      model_dir=model_dir,
      resumed_from=resumed_from,
      stopped_early=bool(meta["stopped_early"]),
      capacities=capacities,
      params=state.params,
    )
  finally:
    metrics_log.close()
    checkpoints.close()


def _budget_spent(config: ml_collections.ConfigDict, meta: dict) -> bool:
  """Whether the run's training time (``meta['train_seconds']``) has reached its budget."""
  budget = float(config.max_train_minutes)
  return budget > 0 and float(meta.get("train_seconds", 0.0)) >= 60.0 * budget


def _exported_metadata(model_dir: str, digest: str, data_version: str) -> dict | None:
  """The metadata of the model in ``model_dir`` if it is whole and this run (same config and
  data) exported it, else None."""
  from crystal_search.models import io as model_io

  try:
    _, _, _, metadata = model_io.load_model(model_dir)
  except InputError:
    return None
  same = metadata.get("config_hash") == digest and metadata.get("data_version") == data_version
  return metadata if same else None


def export_model(
  directory: str, *, adapter: ModelAdapter, state: TrainState, metadata: dict
) -> str:
  """Write a trained model with :func:`crystal_search.models.io.save_model`; returns the folder."""
  from crystal_search.models import io as model_io

  variables = jax.device_get(state.variables())
  model_io.save_model(
    directory, kind=adapter.kind, config=adapter.config, variables=variables, metadata=metadata
  )
  return directory
