"""The force fields a search runs with, from their names (the command line's, or a run's
``run.json``): the model that relaxes (or polishes), the screening model, the energy model
that ranks and the teacher that rescores."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from pymatgen.core import Structure

from crystal_search.errors import InputError
from crystal_search.force_fields.registry import PRETRAINED_DIR, PRETRAINED_MODELS  # noqa: F401

__all__ = [
  "GENERATOR_FILE",
  "apply_model_generator",
  "load_force_field",
  "load_run_force_fields",
  "load_screen_force_field",
]

#: A model directory's random-cell settings (``crystal-search distill`` writes it).
GENERATOR_FILE = "generator.json"


def _model_energy(model: str | None) -> str | None:
  """``model/energy`` when the model directory holds an energy model, else None."""
  if model and os.path.isfile(os.path.join(model, "energy", "model.json")):
    return os.path.join(model, "energy")
  return None


def apply_model_generator(config, model: str | None, *, given: Sequence[str] = ()) -> None:
  """Set ``config.element_volumes`` and ``config.pair_min_separation`` from the model
  directory's :data:`GENERATOR_FILE` (those named in ``given``, set on the command line, win)."""
  import json

  path = os.path.join(model, GENERATOR_FILE) if model else ""
  if not path or not os.path.isfile(path):
    return
  with open(path) as f:
    settings = json.load(f)
  for key in ("element_volumes", "pair_min_separation"):
    if key not in given and settings.get(key):
      config[key] = ",".join(f"{k}={v}" for k, v in sorted(settings[key].items()))


def load_run_force_fields(sources: dict, *, rescore: bool):
  """``(force_field, energy_fn, screen_force_field, teacher)`` named by ``sources``: the
  command line's ``force_field``, ``model``, ``energy_model`` and ``screen_model`` (``""``: the
  default), as a run's ``run.json`` keeps them; the teacher only when ``rescore``."""
  force_field, energy_fn = load_force_field(
    sources["force_field"],
    model=sources["model"] or None,
    energy_model=sources["energy_model"] or None,
  )
  screen_ff = load_screen_force_field(sources["screen_model"], model=sources["model"] or None)
  teacher = load_force_field("chgnet")[0] if rescore else None
  return force_field, energy_fn, screen_ff, teacher


def load_screen_force_field(name: str, *, model: str | None = None):
  """The screening force field for ``search.screen_model`` (a packaged name or a model
  directory), or None for ``""`` or when it is the polishing ``model`` itself."""
  from crystal_search.force_fields.registry import make_force_field

  if not name or name == model:
    return None
  return make_force_field("model", model=name)


def load_force_field(
  kind: str, *, model: str | None = None, energy_model: str | None = None
) -> tuple[object, Callable[[Sequence[Structure]], np.ndarray] | None]:
  """The force field that relaxes, and the energy function that ranks.

  Args:
    kind: ``model`` (our force/stress network; default the shipped one), ``chgnet`` (the
      teacher) or ``meam`` (the 2NN MEAM baseline).
    model: force/stress model directory for ``kind='model'``.
    energy_model: energy model directory for ranking (default: ``model/energy`` when the model
      directory holds one, as ``crystal-search distill`` packages it, else the shipped one).

  Returns:
    ``(force_field, energy_fn)``; ``energy_fn`` is None when the force field's own energies rank.
  """
  from crystal_search.force_fields import model as model_ff
  from crystal_search.force_fields.registry import make_force_field

  if kind not in ("model", "chgnet", "sevennet", "meam"):
    raise InputError(f"unknown force field {kind!r} (model, chgnet, sevennet or meam)")
  force_field = make_force_field(kind, model=model)
  if kind != "model":
    return force_field, None
  energy_path = energy_model or _model_energy(model) or os.path.join(PRETRAINED_DIR, "energy")
  if not os.path.isdir(energy_path):
    raise InputError(f"{energy_path}: no energy model there to rank with (pass --energy_model=DIR)")
  energy_ff = model_ff.from_directory(energy_path)

  def energy_fn(structures: Sequence[Structure]) -> np.ndarray:
    return model_ff.energies_per_atom(energy_ff, structures)

  return force_field, energy_fn
