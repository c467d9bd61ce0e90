"""Save and load trained models: orbax for the arrays, ``model.json`` for config and metadata.

Layout of a model directory::

  model.json     {"format": 1, "kind": ..., "config": {...}, "metadata": {...}}
  variables/     orbax StandardCheckpointer checkpoint of {'params', 'normalization'}

Writes are atomic: everything goes to a temporary sibling directory that is
renamed into place (an existing model is replaced only once the new one is
complete).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np

from crystal_search.errors import InputError
from crystal_search.models import config as config_lib

#: Model kinds a directory may hold.
KINDS = ("force_stress", "energy")
FORMAT = 1


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray | jax.Array):
    return np.asarray(x).tolist()
  return x


def save_model(
  directory: str,
  *,
  kind: str,
  config: ml_collections.ConfigDict,
  variables: dict,
  metadata: dict | None = None,
) -> str:
  """Write a model to ``directory`` (created or replaced atomically); returns its absolute path.

  Args:
    directory: destination folder.
    kind: ``'force_stress'`` or ``'energy'``.
    config: the model config (validated).
    variables: ``{'params': ..., 'normalization': ...}``.
    metadata: JSON-serialisable information (dataset, metrics, ...).
  """
  import orbax.checkpoint as ocp

  if kind not in KINDS:
    raise InputError(f"model kind {kind!r}: expected one of {KINDS}")
  config_lib.validate_config(config)
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
  try:
    arrays = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, "variables"), arrays)
    checkpointer.wait_until_finished()
    checkpointer.close()
    record = {
      "format": FORMAT,
      "kind": kind,
      "config": _jsonable(config.to_dict()),
      "metadata": _jsonable(metadata or {}),
    }
    with open(os.path.join(tmp, "model.json"), "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    old = None
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
      os.rmdir(old)
      os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def load_model(directory: str) -> tuple[str, ml_collections.ConfigDict, dict, dict]:
  """Read a model written by :func:`save_model`.

  Returns:
    ``(kind, config, variables, metadata)``; arrays are numpy.

  Raises:
    InputError: one line when the directory is missing or is not a model.
  """
  import orbax.checkpoint as ocp

  if not os.path.isdir(directory):
    raise InputError(f"{directory}: no such model directory")
  path = os.path.join(directory, "model.json")
  if not os.path.isfile(path):
    raise InputError(f"{directory}: not a model directory (no model.json)")
  try:
    with open(path) as f:
      record = json.load(f)
    kind = record["kind"]
    config = config_lib.from_dict(record["config"])
    metadata = record.get("metadata", {})
  except InputError as e:
    raise InputError(f"{path}: {e}") from None
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(f"{path}: unreadable model description ({type(e).__name__}: {e})") from None
  if kind not in KINDS:
    raise InputError(f"{path}: unknown model kind {kind!r}")
  var_path = os.path.join(os.path.abspath(directory), "variables")
  if not os.path.isdir(var_path):
    raise InputError(f"{directory}: model has no variables/ checkpoint")
  try:
    checkpointer = ocp.StandardCheckpointer()
    variables = checkpointer.restore(var_path)
    checkpointer.close()
  except Exception as e:  # noqa: BLE001 - orbax raises many types; report them in one line.
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f"{var_path}: cannot restore ({type(e).__name__}: {msg[:200]})") from None
  variables = jax.tree_util.tree_map(np.asarray, variables)
  return kind, config, variables, metadata
