"""The shipped force/stress models' configs (``crystal_search/pretrained/``).

  crystal-search train --config=experiments/configs/pretrained.py:large_mae_cpu \
      --workdir=runs/large_mae        # 7 blocks x 64, MAE, epoch-31 budget
  crystal-search train --config=experiments/configs/pretrained.py:large_mae_contacts \
      --workdir=runs/large_mae_contacts  # the default model (force_stress/): large_mae's
                                         # epoch-37 export fine-tuned with short contacts
  crystal-search train --config=experiments/configs/pretrained.py --workdir=runs/pretrained
  crystal-search train --config=experiments/configs/pretrained.py:finetune_mae \
      --workdir=runs/finetune_mae     # the fast model (force_stress_fast/): the above, fine-tuned

``default.py:cpu`` (the same network widths, augmentation and seed) with a ``CUTOFF`` (5 Å)
neighbour cutoff instead of 4 Å, so that each atom sees its second shell, ``BLOCKS`` (6)
message-passing blocks instead of 4, and ``VECTOR_CHANNELS`` (16) rotation-equivariant vectors per
atom carried through the blocks (PaiNN-style, ``model.vector_channels``: the atom states then see
bond angles, which the distance-only edges cannot; the teacher, CHGNet, has explicit three-body
terms), trained on ``data/dataset_strain`` (``STRAIN_DATA``): every training frame of
``data/dataset`` (not the CPU scale's ``CPU_TRAIN_FRAMES`` subset) plus 3,205 teacher-labelled
strained copies of the relaxed training structures (``crystal-search build-strain-frames``,
:mod:`crystal_search.datasets.strain`; the same validation, test and held-out frames), and for
longer: ``EPOCHS`` epochs with the learning rate halved every ``HALVING_EPOCHS``.  This is the one
config beyond the 20-minute CPU budget: about 3 hours on both cores of the 2-core machine
(~235-400 s an epoch on the 13,385 frames whose cells are thick enough for the model's 2 periodic
images at 5 Å, by machine; its run, resumed once at epoch 16, is
``experiments/results/probes/vectors``; row ``GNN (pretrained.py)``).
``pretrained.py:finetune_mae``, this model fine-tuned 12 epochs on the MAE loss, is the package's
fast model (``force_stress_fast``, ``--model=fast``; row ``GNN (fast; pretrained.py:finetune_mae)``); the
package's default is ``large_mae_contacts`` (below).  ``pretrained.py:blocks6``, ``:blocks4`` and
``:cutoff4`` are this config with fewer parts (below).
Validation stays on the CPU scale's ``CPU_EVAL_FRAMES`` subset so that the per-epoch
validation does not dominate the epoch time.

The shipped config's own variants (5 Å, strain data):

* ``pretrained.py:blocks6``: the shipped config without the vector channels (row
  ``GNN (pretrained.py:blocks6)``), ~170 s an epoch on one core; a train step costs ~1.3x less
  than the shipped config's (``benchmarks/results/training_curves.md``);
* ``pretrained.py:blocks4``: ``blocks6`` with ``default.py``'s 4 blocks (row
  ``GNN (pretrained.py:blocks4)``), ~125 s an epoch;
* ``pretrained.py:long``: the shipped config for ``LONG_EPOCHS`` (75) epochs instead of 45 (two
  more halvings of the learning rate; row ``GNN (shipped config; 75 epochs)``); its first 45
  epochs are the shipped run's, continued with ``crystal-search train --extend``
  (``experiments/results/probes/README.md``).
* ``pretrained.py:finetune_mae``: the shipped model (``FINETUNE_FROM``, a byte copy of its
  export) trained on for ``FINETUNE_EPOCHS`` epochs with the mean absolute error of the
  standardised forces and stresses as the loss (``loss='mae'``; the tables report MAEs, and a
  squared loss spends its steps on the largest errors), from the learning rate of the shipped
  run's best epoch (``FINETUNE_LR``) halved every ``FINETUNE_HALVING_EPOCHS`` (the
  package's fast model, row ``GNN (fast; pretrained.py:finetune_mae)``).

The accelerator scale of the shipped config (``scale='paper'``; for a lent GPU,
``scripts/device/train_large.sh``, which sets ``max_train_minutes``):

* ``pretrained.py:large``: the shipped config at the paper's depth and width (``LARGE``: 7
  blocks of width 64, heads 64-32, 32 vector channels), validated on every validation frame,
  up to ``LARGE_EPOCHS`` epochs with the learning rate halved every ``LARGE_HALVING_EPOCHS``
  (a time budget usually ends it first), no early stopping;
* ``pretrained.py:large_mae``: ``large`` trained on the MAE loss from the start (what
  ``scripts/device/train_large.sh`` runs by default; ``benchmarks/capacity_probe.py`` compares
  the two sizes on the two losses in 10-epoch probes on 2,000 frames on the CPU,
  ``benchmarks/results/capacity_probe.md``; with no GPU lent, it trains on the CPU, resumed
  run by run, in ``experiments/results/probes/large_mae`` under a cumulative
  ``max_train_minutes``, ~8-14 min an epoch on both cores; after 33 epochs (best 31) test
  force 0.0299 eV/Å, stress 0.886 kBar: ``experiments/results/probes/README.md``);
* ``pretrained.py:large_mae_cpu``: ``large_mae`` under the CPU budget it trained with
  (``LARGE_MAE_CPU_MINUTES``): its epoch-31 export (row
  ``GNN (pretrained.py:large_mae_cpu)``);
* ``pretrained.py:large_finetune_mae``: ``large``'s export (``LARGE_WORKDIR/model``) trained on
  with the MAE loss, as ``finetune_mae`` does for the shipped model.
* ``pretrained.py:large_mae_contacts``: ``large_mae``'s export (``CONTACTS_FROM``, epoch 37)
  fine-tuned for ``CONTACTS_EPOCHS`` epochs on ``data/dataset_contacts`` (``CONTACTS_DATA``): the
  strain dataset's training frames plus ``CONTACTS_SETTINGS['max_sources']`` of them displaced by
  ``CONTACTS_SETTINGS['rattle']`` Å and labelled by the teacher, so that the network sees contacts
  of 1.2–2.1 Å (median 1.8) where its training frames have none below 2.0 Å (the
  epoch-31 model blew up on rattled starts with 1.5–1.7 Å contacts,
  ``benchmarks/results/known_phase_basins_large31.md``).  The package's default force/stress
  model (``crystal_search/pretrained/force_stress``, row ``GNN (shipped)``).

The other variants (none shipped) keep the 4 Å cutoff of ``default.py:cpu``; the rows named
``shipped config; ...`` in the tables are variants of ``cutoff4``, the config shipped when they
were trained (4 blocks, 4 Å):

* ``pretrained.py:cutoff4``: ``blocks4`` at 4 Å (row ``GNN (pretrained.py:cutoff4)``), ~90 s an
  epoch;
* ``pretrained.py:no_strain``: ``cutoff4`` without the strain frames, on ``data/dataset`` (row ``GNN (shipped config; no strain frames)``): the same
  force and trajectory metrics, but a nearly flat pressure-volume curve near equilibrium
  (``benchmarks/results/equation_of_state.md``);
* ``pretrained.py:wide``: ``no_strain`` at twice the width (``WIDE``: blocks of width 64, heads
  64-32), a capacity check, about 150 s an epoch on one core (row
  ``GNN (shipped config; width 64)``);
* ``pretrained.py:rattle|rattle_small``: ``cutoff4`` on ``data/dataset_rattle[_small]``
  (``RATTLE_DATA``): its training frames plus one teacher-labelled copy of each, moved off the
  relaxation path (volume 0.95–1.05, shear 0.02, 0.05 Å displacements; small: 0.97–1.03, 0.01,
  0.02 Å; ``build-strain-frames --source=frames``), for ``RATTLE_EPOCHS`` epochs halved every
  ``RATTLE_HALVING_EPOCHS``: twice the frames for about the same optimiser steps (~180 s an
  epoch on one core);
* ``pretrained.py:plane|corner|global``: the paper's force and stress heads (per-atom node force
  head, the Table 5 stress head, vector edge inputs: ``stress_heads.py:HEAD``) on the ``cutoff4``
  trunk and budget, on ``data/dataset`` (rows ``GNN stress=HEAD (shipped budget)``).
"""

import ml_collections

from experiments.configs import data, default, stress_heads

#: Neighbour cutoff (Å) of the shipped config and ``SHIPPED_VARIANTS``; the others keep
#: ``default.py``'s 4 Å.
CUTOFF = 5.0
EPOCHS = 45
#: Epochs of ``long`` (the shipped config trained on).
LONG_EPOCHS = 75
HALVING_EPOCHS = 15
#: Message-passing blocks of the shipped model and ``blocks6``/``long`` (the others have 4).
BLOCKS = 6
WIDE = {"width": 64, "head_widths": (64, 32)}
#: The dataset with the strain frames (``crystal-search build-strain-frames``).
STRAIN_DATA = "data/dataset_strain"
#: The shipped frames plus a teacher-labelled displaced copy of each, by variant: ``rattle``
#: (0.05 Å, volume 0.95–1.05, shear 0.02), ``rattle_small`` (0.02 Å, 0.97–1.03, 0.01).
RATTLE_DATA = {"rattle": "data/dataset_rattle", "rattle_small": "data/dataset_rattle_small"}
#: ``build-strain-frames --source=frames`` flags that made each (``--dataset=data/dataset_strain``).
RATTLE_SETTINGS = {
  "rattle": {
    "copies": 1,
    "volume_low": 0.95,
    "volume_high": 1.05,
    "shear_std": 0.02,
    "rattle": 0.05,
  },
  "rattle_small": {
    "copies": 1,
    "volume_low": 0.97,
    "volume_high": 1.03,
    "shear_std": 0.01,
    "rattle": 0.02,
  },
}
RATTLE_EPOCHS = 24
RATTLE_HALVING_EPOCHS = 8
#: The paper's stress heads, trained with the shipped budget on ``data/dataset``.
PAPER_HEADS = ("plane", "corner", "global")
#: Equivariant vectors per atom of the shipped model (``model.vector_channels``).
VECTOR_CHANNELS = 16
#: ``finetune_mae``: the model it starts from (the shipped run's export, 45 epochs, best 37),
#: its epochs, starting learning rate (the shipped run's from epoch 31) and halving period.
FINETUNE_FROM = "experiments/results/probes/vectors/model"
FINETUNE_EPOCHS = 12
FINETUNE_LR = 2.5e-4
FINETUNE_HALVING_EPOCHS = 4
#: ``large``: the shipped config at the paper's depth and width, for accelerators; its epochs
#: and halving period (a ``max_train_minutes`` budget usually ends it first), and the workdir
#: whose export ``large_finetune_mae`` starts from.
LARGE = {"num_blocks": 7, "width": 64, "head_widths": (64, 32), "vector_channels": 32}
LARGE_EPOCHS = 60
LARGE_HALVING_EPOCHS = 10
LARGE_WORKDIR = "runs/pretrained_large"
#: ``large_mae_cpu``: the wall-clock budget (minutes, cumulative over its resumed runs) under
#: which ``large_mae`` trained on the CPU into its epoch-31 export.
LARGE_MAE_CPU_MINUTES = 330.0
#: ``large_mae_contacts``: the model it starts from (``large_mae``'s export after 37 epochs in a
#: 370-min budget), its dataset, the ``build-strain-frames --source=frames`` flags that made it
#: (``--dataset=data/dataset_strain``), its epochs, learning rate (``large_mae``'s at epoch 37) and
#: halving period.
CONTACTS_FROM = "experiments/results/probes/large_mae/model"
CONTACTS_DATA = "data/dataset_contacts"
CONTACTS_SETTINGS = {
  "copies": 1,
  "volume_low": 0.97,
  "volume_high": 1.03,
  "shear_std": 0.01,
  "rattle": 0.25,
  "max_sources": 2000,
}
CONTACTS_EPOCHS = 4
CONTACTS_LR = 1.25e-4
CONTACTS_HALVING_EPOCHS = 2
#: Global-norm gradient clipping of ``large_mae_contacts``, below the norm of any batch: every
#: step's gradient is scaled to this norm (Adam then sees each batch with the same weight). On the
#: shortest contacts the starting network predicts forces of ~1e11 eV/Å; unclipped, the first
#: such batch fills Adam's second moments and freezes most parameters for thousands of steps.
CONTACTS_GRAD_CLIP = 1e-4
#: Variants of the shipped config itself (5 Å, strain data); the others keep 4 Å.
SHIPPED_VARIANTS = (
  "blocks6",
  "blocks4",
  "long",
  "finetune_mae",
  "large",
  "large_mae",
  "large_mae_cpu",
  "large_finetune_mae",
  "large_mae_contacts",
)
VARIANTS = (*SHIPPED_VARIANTS, "cutoff4", "no_strain", "wide", *RATTLE_DATA, *PAPER_HEADS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: empty (the shipped config), ``VARIANT`` or ``VARIANT,SEED`` (VARIANT in
  ``VARIANTS``; SEED an integer, default 0)."""
  arg, _, seed = (arg or "").partition(",")
  if arg not in ("", *VARIANTS) or (seed and not seed.isdigit()):
    raise ValueError(
      f"pretrained.py takes no argument, VARIANT or VARIANT,SEED (VARIANT one of {VARIANTS}), "
      f"got {arg + (',' + seed if seed else '')!r}"
    )
  c = stress_heads.get_config(f"{arg},cpu") if arg in PAPER_HEADS else default.base_config("cpu")
  c.data.max_train_frames = 0
  c.num_epochs = EPOCHS
  c.lr_halving_epochs = HALVING_EPOCHS
  c.patience = HALVING_EPOCHS
  c.data.path = STRAIN_DATA if arg in ("", "cutoff4", *SHIPPED_VARIANTS) else data.DEFAULT_PATH
  if arg in ("", *SHIPPED_VARIANTS):
    c.model.cutoff = CUTOFF
  if arg in ("", "long", "blocks6", "finetune_mae"):
    c.model.num_blocks = BLOCKS
  if arg in ("", "long", "finetune_mae"):
    c.model.vector_channels = VECTOR_CHANNELS
  if arg == "long":
    c.num_epochs = LONG_EPOCHS
  if arg == "finetune_mae":
    c.init_from = FINETUNE_FROM
    c.loss = "mae"
    c.num_epochs = c.patience = FINETUNE_EPOCHS
    c.learning_rate = FINETUNE_LR
    c.lr_halving_epochs = FINETUNE_HALVING_EPOCHS
  if arg in RATTLE_DATA:
    c.data.path = RATTLE_DATA[arg]
    c.num_epochs = RATTLE_EPOCHS
    c.lr_halving_epochs = c.patience = RATTLE_HALVING_EPOCHS
  if arg == "wide":
    for key, value in WIDE.items():
      c.model[key] = value
  if arg in ("large", "large_mae", "large_mae_cpu", "large_finetune_mae", "large_mae_contacts"):
    c.scale = "paper"
    for key, value in LARGE.items():
      c.model[key] = value
    c.data.max_eval_frames = 0
    c.num_epochs = LARGE_EPOCHS
    c.lr_halving_epochs = LARGE_HALVING_EPOCHS
    c.patience = 0
  if arg in ("large_mae", "large_mae_cpu", "large_mae_contacts"):
    c.loss = "mae"
  if arg == "large_mae_cpu":
    c.max_train_minutes = LARGE_MAE_CPU_MINUTES
  if arg == "large_finetune_mae":
    c.init_from = f"{LARGE_WORKDIR}/model"
    c.loss = "mae"
    c.num_epochs = FINETUNE_EPOCHS
    c.learning_rate = FINETUNE_LR
    c.lr_halving_epochs = FINETUNE_HALVING_EPOCHS
  if arg == "large_mae_contacts":
    c.init_from = CONTACTS_FROM
    c.data.path = CONTACTS_DATA
    c.num_epochs = CONTACTS_EPOCHS
    c.learning_rate = CONTACTS_LR
    c.lr_halving_epochs = CONTACTS_HALVING_EPOCHS
    c.grad_clip = CONTACTS_GRAD_CLIP
  if seed:
    c.seed = int(seed)
  return c
