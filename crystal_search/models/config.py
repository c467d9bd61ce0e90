"""Model hyperparameters (paper section 3.3 and appendix 7.4) and their validation."""

from __future__ import annotations

import ml_collections

from crystal_search.errors import InputError

#: Stress heads of the force/stress model (paper appendix 7.4, Table 5).
STRESS_HEADS = ("plane", "corner", "global", "virial")
#: Force heads: the paper's per-node output, or ours, summed over edges along the bonds.
FORCE_HEADS = ("node", "edge")
EDGE_INPUTS = ("vector", "rbf")
#: Keys added after the first models were saved, with the value those models were built with.
ADDED_KEYS = {"force_head": "node", "edge_inputs": "vector", "vector_channels": 0}
#: Added keys left out of :func:`crystal_search.training.config_hash` at these values (keys
#: added after runs were hashed: the hashes of those runs stay what they were).
HASH_NEUTRAL_KEYS = {"vector_channels": 0}
ACTIVATIONS = ("softplus", "silu")
DTYPES = ("float32", "float64")
DERIVATIVES = ("fd", "autodiff")


def get_model_config() -> ml_collections.ConfigDict:
  """Every width, depth and cutoff of the networks, with the paper's values.

  Keys:
    elements: element symbols the embedding knows (order fixes the indices).
    embed_dim: element embedding size (16).
    num_blocks: MEGNet blocks (7).
    width: node/edge/global state size and MLP width (two-layer MLPs of 64).
    head_widths: output-head MLP widths (64, 32).
    cutoff: neighbour cutoff, Å (4).
    max_images: largest periodic-image half-width searched per axis; enough for
      cells thicker than ``cutoff / (max_images + 0.5)`` Å, thinner cells are
      flagged as overflow.
    stress_head: ``'plane'`` (fictitious atoms on the (100), (010), (001)
      planes; the paper's choice), ``'corner'`` (fictitious atoms on the cell
      corners) or ``'global'`` (set2set readout -> 6 components; atom-plane
      distances appended to the node inputs) or ``'virial'`` (ours: a sum over
      bonds of learned scalars times ``r (x) r / |r|``, divided by the volume).
    force_head: ``'node'`` (the paper: an MLP of each atom's state -> 3) or
      ``'edge'`` (ours: learned scalars times unit bond vectors, summed).
    edge_inputs: ``'vector'`` (the paper's ``(r, |r|, |r|^2)``) or ``'rbf'``
      (Gaussians of ``|r|`` with a smooth cutoff: rotation invariant; meant for the
      'virial'/'global' stress heads, since plane/corner edges longer than the cutoff
      get zero weight).
    vector_channels: rotation-equivariant vectors per atom carried through the blocks
      (ours, after PaiNN; 0 = none, the paper's MEGNet).  They bring bond angles into the atom
      states and add a term to the ``'edge'`` force head; need ``edge_inputs='rbf'``
      (:class:`crystal_search.models.megnet.MEGNetBlock`).
    activation: ``'softplus'`` or ``'silu'``.
    set2set_steps: processing steps of every set2set readout.
    dtype: ``'float32'`` or ``'float64'`` (parameters and computation).
    energy: the energy baseline: ``derivative`` (``'fd'`` central finite
      differences as in the paper, or ``'autodiff'``), ``fd_step`` (Å),
      ``fd_strain`` (dimensionless), ``fd_chunk`` (displaced copies evaluated
      at once).
  """
  c = ml_collections.ConfigDict()
  c.elements = ("Li", "Si")
  c.embed_dim = 16
  c.num_blocks = 7
  c.width = 64
  c.head_widths = (64, 32)
  c.cutoff = 4.0
  c.max_images = 2
  c.stress_head = "plane"
  c.force_head = "node"
  c.edge_inputs = "vector"
  c.vector_channels = 0
  c.activation = "softplus"
  c.set2set_steps = 3
  c.dtype = "float32"
  c.energy = ml_collections.ConfigDict()
  c.energy.derivative = "fd"
  c.energy.fd_step = 0.01
  c.energy.fd_strain = 0.002
  c.energy.fd_chunk = 64
  return c


def _keys(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Check a model config; returns it unchanged.

  Raises:
    InputError: one line naming the key and the problem (unknown key, missing
      key, impossible value).
  """
  from pymatgen.core import Element

  given = _keys(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  default = _keys(get_model_config().to_dict())
  for key in given:
    if key not in default:
      raise InputError(f"model config: unknown key {key!r}")
  for key in default:
    if key not in given:
      raise InputError(f"model config: missing key {key!r}")

  def need(ok, key, problem):
    if not ok:
      raise InputError(f"model config: {key}={given[key]!r} {problem}")

  elements = given["elements"]
  need(isinstance(elements, list | tuple) and len(elements) > 0, "elements", "must be a list")
  for symbol in elements:
    need(isinstance(symbol, str) and Element.is_valid_symbol(symbol), "elements", "unknown symbol")
  need(len(set(elements)) == len(elements), "elements", "has duplicates")
  for key in ("embed_dim", "num_blocks", "width", "set2set_steps", "energy.fd_chunk"):
    need(isinstance(given[key], int) and given[key] >= 1, key, "must be a positive integer")
  channels = given["vector_channels"]
  need(isinstance(channels, int) and channels >= 0, "vector_channels", "must be an integer >= 0")
  need(
    channels == 0 or given["edge_inputs"] == "rbf",
    "vector_channels",
    "needs edge_inputs='rbf' (rotation-invariant, smooth edges)",
  )
  need(isinstance(given["max_images"], int) and given["max_images"] >= 1, "max_images", ">= 1")
  widths = given["head_widths"]
  need(
    isinstance(widths, list | tuple) and all(isinstance(w, int) and w >= 1 for w in widths),
    "head_widths",
    "must be positive integers",
  )
  for key in ("cutoff", "energy.fd_step", "energy.fd_strain"):
    need(isinstance(given[key], int | float) and given[key] > 0, key, "must be > 0")
  need(given["stress_head"] in STRESS_HEADS, "stress_head", f"must be one of {STRESS_HEADS}")
  need(given["force_head"] in FORCE_HEADS, "force_head", f"must be one of {FORCE_HEADS}")
  need(given["edge_inputs"] in EDGE_INPUTS, "edge_inputs", f"must be one of {EDGE_INPUTS}")
  need(given["activation"] in ACTIVATIONS, "activation", f"must be one of {ACTIVATIONS}")
  need(given["dtype"] in DTYPES, "dtype", f"must be one of {DTYPES}")
  need(given["energy.derivative"] in DERIVATIVES, "energy.derivative", f"one of {DERIVATIVES}")
  return config


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A validated config from a plain dict (e.g. read from JSON: lists become tuples)."""

  def fix(x):
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x

  d = dict(d)
  for key, value in ADDED_KEYS.items():
    d.setdefault(key, value)
  config = ml_collections.ConfigDict(fix(d))
  return validate_config(config)


def frozen(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """A hashable copy (for ``jax.jit`` static arguments)."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    return config
  return ml_collections.FrozenConfigDict(config)
