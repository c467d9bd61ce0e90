"""Training of the force/stress and energy models (the paper's protocol, section 3.3).

* **Loss** (:mod:`.steps`): the sum of the mean squared errors of the standardised forces and
  the standardised stresses (force/stress model), or of the standardised energy per atom
  (energy baseline).  Padding atoms and padding structures are masked out.  ``loss='mae'``
  takes mean absolute errors instead (ours, for fine-tuning: the tables report MAEs).  The
  standardisation statistics come from the training set and live in the model variables
  (``set_normalization``) before the first step.
* **Optimiser** (:mod:`.steps`): Adam, learning rate ``1e-3`` halved every
  ``lr_halving_epochs`` (15) epochs (a staircase ``optax.exponential_decay`` over steps).
* **Augmentation** (:mod:`crystal_search.augment`, :func:`.data.epoch_batches`), drawn per epoch
  from ``(seed, epoch)``: 50 % of the structures rotated by 90 degrees, 30 % with Gaussian noise
  of ``noise_std`` Å on Cartesian positions and lattice vectors (the energy baseline's config
  sets the noise fraction to 0: rotations only).
* **Batches** (:mod:`.data`): frames are grouped by atom-count bucket
  (:func:`crystal_search.crystals.bucket_size`) and cut into fixed-size batches, so
  ``train_step`` compiles once per bucket (padding structures fill the last batch of a bucket).
  The neighbour capacity of each bucket is computed on the host from the data (with a margin);
  when the model reports an overflow the step is discarded inside the jitted step, the capacity
  grows and the batch is recomputed, so the model never trains on a truncated graph.
* **Early stopping** (:mod:`.loop`) on the validation loss (``patience`` epochs), best and latest
  checkpoints with orbax every epoch (:mod:`.checkpoints`), resumption from the latest one.  The
  data order and augmentation depend only on ``(seed, epoch)``, so a killed and resumed run ends
  with the same parameters as an uninterrupted one.
* **Time budget** (``max_train_minutes``, 0 = none; for a lent accelerator): the run ends after
  the epoch in which its summed epoch time reaches the budget and exports its best model, as a
  finished run does (``stopped_on_budget`` in the model's metadata).  How many epochs that is
  depends on the machine; resumption still continues the same sequence.
* **Fine-tuning** (:mod:`.export`): ``init_from`` names an exported model
  (:func:`crystal_search.models.io.save_model`) of the same kind and model config whose
  variables (parameters and normalisation statistics) replace the initialisation; the
  optimiser starts afresh.
* **Export** (:mod:`.export`): the best model (by validation loss) is written with
  :func:`crystal_search.models.io.save_model` to ``workdir/model`` with its config, the dataset
  version and the test metrics.

Modules: :mod:`.config` (keys, validation, run hash), :mod:`.data` (datasets and batches),
:mod:`.steps` (losses, model adapters, train state, jitted steps), :mod:`.checkpoints` (the run
directory), :mod:`.export` (models in and out), :mod:`.loop` (:func:`train`).

Workdir layout::

    run.json            config, its hash, the dataset version (identifies the run)
    checkpoints/latest  orbax checkpoint of the last finished epoch
    checkpoints/best    orbax checkpoint of the best epoch (validation loss)
    metrics.csv         one row per epoch
    model/              the exported best model

Units: forces eV/Å, stress kBar, energy eV (per cell; per atom where named).
"""

from crystal_search.crystals import bucket_size
from crystal_search.training.checkpoints import (
  Checkpoints,
  extends,
  prepare_workdir,
  read_metrics,
)
from crystal_search.training.config import (
  HASH_NEUTRAL_KEYS,
  LOSSES,
  MODEL_KINDS,
  Log,
  config_hash,
  get_default_config,
  validate_config,
)
from crystal_search.training.data import (
  OPTIONAL_SPLITS,
  REQUIRED_SPLITS,
  THIN_CELL_MARGIN,
  Batch,
  Dataset,
  bucket_batches,
  dataset_version,
  epoch_batches,
  frame_formulas,
  load_dataset,
  make_batch,
  neighbour_capacities,
  normalization_stats,
  too_thin,
)
from crystal_search.training.export import export_model, load_init_from
from crystal_search.training.loop import TrainResult, train
from crystal_search.training.steps import (
  MAX_CAPACITY_GROWTHS,
  ModelAdapter,
  TrainState,
  create_train_state,
  dataset_metrics,
  evaluate_frames,
  force_stress_loss,
  lr_schedule,
  make_optimizer,
  make_steps,
  masked_mae,
  masked_mse,
  model_adapter,
)

__all__ = [
  "HASH_NEUTRAL_KEYS",
  "LOSSES",
  "MAX_CAPACITY_GROWTHS",
  "MODEL_KINDS",
  "OPTIONAL_SPLITS",
  "REQUIRED_SPLITS",
  "THIN_CELL_MARGIN",
  "Batch",
  "Checkpoints",
  "Dataset",
  "Log",
  "ModelAdapter",
  "TrainResult",
  "TrainState",
  "bucket_batches",
  "bucket_size",
  "config_hash",
  "create_train_state",
  "dataset_metrics",
  "dataset_version",
  "epoch_batches",
  "evaluate_frames",
  "export_model",
  "extends",
  "force_stress_loss",
  "frame_formulas",
  "get_default_config",
  "load_dataset",
  "load_init_from",
  "lr_schedule",
  "make_batch",
  "make_optimizer",
  "make_steps",
  "masked_mae",
  "masked_mse",
  "model_adapter",
  "neighbour_capacities",
  "normalization_stats",
  "prepare_workdir",
  "read_metrics",
  "too_thin",
  "train",
  "validate_config",
]
