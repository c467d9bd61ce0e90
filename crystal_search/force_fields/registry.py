"""Force fields by name: the packaged models, our trained models from a directory, the teacher
(CHGNet), MEAM and a Lennard-Jones toy.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
from pymatgen.core import Lattice, Structure

from crystal_search import crystals as crystals_lib
from crystal_search.errors import InputError

#: Where the pretrained models ship inside the package.
PRETRAINED_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained"
)
#: The packaged force/stress models by name (``--model=NAME``, resolved by
#: :func:`make_force_field`): ``default`` is the most accurate (loaded when no model is given),
#: ``fast`` a smaller network, ~3x cheaper a step, ``tiny`` the 4-block 4 Å network of
#: ``pretrained.py:cutoff4``, ~8x cheaper (the search's screening model).
PRETRAINED_MODELS = {
  "default": "force_stress",
  "fast": "force_stress_fast",
  "tiny": "force_stress_tiny",
}


FORCE_FIELD_KINDS = ("model", "chgnet", "sevennet", "meam", "lj")


def make_force_field(
  kind: str, *, model: str | None = None, untrained: bool = False, seed: int = 0
):
  """A force field by name.

  Args:
    kind: ``model`` (our force/stress network from ``model``, or the pretrained one
      shipped in the package when present), ``chgnet`` (the teacher), ``sevennet`` (SevenNet-0,
      a second universal potential that can stand in for the teacher), ``meam``
      (2NN MEAM through LAMMPS) or ``lj`` (a Lennard-Jones toy for smoke tests).
    model: force/stress model directory (``kind='model'``), or the name of a packaged model
      (``search.PRETRAINED_MODELS``: ``default`` or ``fast``) when no such directory exists.
    untrained: ``kind='model'`` without a directory: random weights (smoke tests and
      throughput only; its relaxations are meaningless).
    seed: PRNG seed of the untrained weights.

  Raises:
    InputError: unknown kind, or no model directory (and no pretrained model) for ``model``.
  """
  if kind == "chgnet":
    from crystal_search.force_fields.chgnet import CHGNetForceField

    return CHGNetForceField()
  if kind == "sevennet":
    from crystal_search.force_fields.sevennet import sevennet

    return sevennet()
  if kind == "meam":
    from crystal_search.force_fields.lammps_meam import MEAMForceField

    return MEAMForceField()
  if kind == "lj":
    from crystal_search.force_fields import analytic

    return analytic.lennard_jones(sigma=2.0, epsilon=0.1)
  if kind != "model":
    raise InputError(f"unknown force field {kind!r} (one of {', '.join(FORCE_FIELD_KINDS)})")

  label = model
  if model in PRETRAINED_MODELS and not os.path.isdir(model):
    model = os.path.join(PRETRAINED_DIR, PRETRAINED_MODELS[model])
  if model:
    if not os.path.isdir(model):
      names = " or ".join(PRETRAINED_MODELS)
      raise InputError(f"{model}: no such model directory (nor a packaged model: {names})")
    return _load(os.path.abspath(model), label, _stamp(model))
  pretrained = os.path.join(PRETRAINED_DIR, PRETRAINED_MODELS["default"])
  if os.path.isdir(pretrained):
    return _load(pretrained, "default", _stamp(pretrained))
  if untrained:
    return untrained_model(seed=seed)
  raise InputError(
    "--force_field=model needs --model=DIR: no pretrained model ships yet "
    "(or pass --untrained for a smoke test, or --force_field=chgnet|meam|lj)"
  )


def _stamp(path: str) -> float:
  """Modification time of a model directory's ``model.json`` (a rewritten model loads anew)."""
  try:
    return os.path.getmtime(os.path.join(path, "model.json"))
  except OSError:
    return 0.0


@functools.lru_cache(maxsize=8)
def _load(path: str, label: str, stamp: float):
  """A model directory's force field, loaded once per process and ``stamp`` (the same object, so
  the relaxer's compiled programs are shared between calls), named after ``label`` in reports."""
  del stamp
  from crystal_search.force_fields import model as model_ff

  ff = model_ff.from_directory(path)
  return dataclasses.replace(ff, name=f"{ff.name} ({label})")


def untrained_model(*, seed: int = 0, max_atoms: int = 40):
  """The force/stress network with random weights (default config): for smoke tests and timing."""
  from crystal_search.force_fields import model as model_ff
  from crystal_search.models import config as config_lib
  from crystal_search.models import force_stress

  config = config_lib.get_model_config()
  lattice = Lattice.cubic(4.0)
  example = crystals_lib.from_structures(
    [Structure(lattice, ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])], max_atoms=8
  )
  variables = force_stress.init(config, jax.random.PRNGKey(seed), example)
  ff = model_ff.ModelForceField(config, variables, model_ff.default_capacity(max_atoms))
  return dataclasses.replace(ff, name="gnn-force-stress (UNTRAINED weights)")
