"""Trained models in and out: the model a run starts from (``init_from``) and the export of the
best one (:func:`crystal_search.models.io.save_model`)."""

from __future__ import annotations

import hashlib

import jax
import ml_collections
import numpy as np

from crystal_search.errors import InputError
from crystal_search.training.steps import ModelAdapter, TrainState


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
