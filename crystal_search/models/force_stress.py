"""The paper's force/stress network: MEGNet trunk, force head on atoms, stress head on planes.

Force head (section 3.3): node MLP ``head_widths`` (64 -> 32), concatenated
with the global state, linear -> 3.  Stress head (``config.stress_head``):

* ``'plane'``: each of the 3 fictitious plane nodes ((100), (010), (001)) runs
  the same kind of head and outputs one row of the 3x3 stress; the matrix is
  symmetrised ``(S + S^T) / 2``;
* ``'corner'``: the same from fictitious nodes on the cell corners at ``a_k``;
* ``'global'``: set2set of the real nodes and edges joined with the global
  state, MLP -> 6 Voigt components (xx, yy, zz, yz, xz, xy); the atom-plane
  distances are appended to the atom inputs (appendix 7.4).
* ``'virial'`` (ours, not in the paper): a virial-like sum over the atom–atom edges,
  ``S = (V0 / V) sum_ij w_ij r_ij (x) r_ij / |r_ij| + s(u) I`` with a scalar ``w_ij`` per edge
  (MLP of the edge, its two atoms and the global state, times the cosine envelope), ``V`` the
  cell volume and ``V0`` = :data:`VIRIAL_VOLUME` Å^3 a fixed scale; symmetric by construction
  and rotation-equivariant.

Force head (``config.force_head``): ``'node'`` is the paper's (above); ``'edge'`` (ours) sums
scalar edge weights times the unit bond vectors, ``F_i = sum_j w_ij r_ij / |r_ij|``, again
with an MLP of the edge, its atoms and the global state times the envelope.  With
``edge_inputs='rbf'`` (rotation-invariant edge inputs) the edge heads make forces and stress
exactly rotation-equivariant, so no capacity is spent learning rotations from 90° augmentation.

Targets are standardised; the statistics live in the variables::

  variables = {'params': ...,
               'normalization': {'force_mean' [3], 'force_std' [3],    # eV/Å
                                 'stress_mean' [3, 3], 'stress_std' [3, 3]}}  # kBar

Scalars given to :func:`set_normalization` are broadcast to those shapes (the
trainer passes one mean/std over all force components and one over the 9
stress components).  ``forces = forces_normalized * force_std + force_mean``,
likewise for stress.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import ml_collections
import numpy as np
from flax import struct

from crystal_search import graphs
from crystal_search.crystals import Crystals
from crystal_search.models import megnet
from crystal_search.models.config import validate_config


@struct.dataclass
class Prediction:
  """Force/stress network outputs for ``B`` structures with ``N`` atom slots.

  Attributes:
    forces_normalized: ``[B, N, 3]`` standardised forces (zero on padding).
    stress_normalized: ``[B, 3, 3]`` standardised stress, symmetric.
    forces: ``[B, N, 3]`` eV/Å (zero on padding atoms).
    stress: ``[B, 3, 3]`` kBar, tensile positive (zero on padding structures).
    overflow: ``[B]`` bool, the neighbour capacity or image range was too small
      (outputs of that structure are invalid).
  """

  forces_normalized: jax.Array
  stress_normalized: jax.Array
  forces: jax.Array
  stress: jax.Array
  overflow: jax.Array


#: Scale ``V0`` (Å^3) of the virial stress head: Li–Si cells hold about 1.5 bonds within 4 Å
#: per Å^3 of about 3 Å each, so ``V0 = 0.25`` keeps the sum of order one at initialisation.
VIRIAL_VOLUME = 0.25


def fictitious_kind(config: ml_collections.ConfigDict) -> str | None:
  """Fictitious nodes the graph needs: ``'plane'``, ``'corner'`` or None (global/virial head)."""
  return {"plane": "plane", "corner": "corner", "global": None, "virial": None}[config.stress_head]


def _voigt_to_matrix(x: jax.Array) -> jax.Array:
  xx, yy, zz, yz, xz, xy = (x[..., k] for k in range(6))
  rows = [jnp.stack(r, axis=-1) for r in ((xx, xy, xz), (xy, yy, yz), (xz, yz, zz))]
  return jnp.stack(rows, axis=-2)


class ForceStressNet(nn.Module):
  """Graph -> ``(forces_normalized [B, N, 3], stress_normalized [B, 3, 3])``."""

  elements: tuple[str, ...]
  embed_dim: int = 16
  num_blocks: int = 7
  width: int = 64
  head_widths: tuple[int, ...] = (64, 32)
  act: str = "softplus"
  stress_head: str = "plane"
  force_head: str = "node"
  edge_inputs: str = "vector"
  cutoff: float = 4.0
  set2set_steps: int = 3
  vector_channels: int = 0
  dtype: jnp.dtype = jnp.float32

  def _edge_scalars(self, name, v, e, u, graph, num_graphs, weight):
    """Per-edge scalars ``[Ed, 1]`` (MLP of edge, both atoms, global) times ``weight``."""
    del num_graphs
    parts = megnet.edge_parts(e, v, u, graph)
    x = megnet.MLP(self.head_widths, self.act, dtype=self.dtype, name=f"{name}_mlp")(parts)
    w = nn.Dense(1, dtype=self.dtype, param_dtype=self.dtype, name=f"{name}_out")(x)
    return w * weight

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    p = 3 if self.stress_head in ("plane", "corner") else 0
    v, e, u, *vec = megnet.MEGNet(
      self.elements,
      self.embed_dim,
      self.num_blocks,
      self.width,
      self.act,
      num_fictitious=p,
      plane_inputs=self.stress_head == "global",
      edge_inputs=self.edge_inputs,
      cutoff=self.cutoff,
      vector_channels=self.vector_channels,
      dtype=self.dtype,
    )(graph)
    b = graph.n_node.shape[0]
    per = v.shape[0] // b
    n = per - p
    vs = v.reshape(b, per, -1)
    mlp = lambda: megnet.MLP(self.head_widths, self.act, dtype=self.dtype)
    dense = lambda k: nn.Dense(k, dtype=self.dtype, param_dtype=self.dtype)
    vectors = graph.edges["vectors"].astype(self.dtype)
    d, unit = graphs.unit_vectors(vectors)  # zero on padding edges
    real = graph.edges["real"][:, None].astype(self.dtype)
    envelope = megnet.cosine_envelope(d, self.cutoff) * real  # real atom-atom edges only
    # Forces on real atoms.
    if self.force_head == "node":
      atoms = mlp()(vs[:, :n])
      u_atoms = jnp.broadcast_to(u[:, None, :], (b, n, u.shape[-1]))
      forces = dense(3)(jnp.concatenate([atoms, u_atoms], axis=-1))
    else:
      w = self._edge_scalars("force", v, e, u, graph, b, envelope)
      per_node = jax.ops.segment_sum(w * unit, graph.receivers, num_segments=v.shape[0])
      if vec:  # plus a linear combination of the atom's equivariant vectors
        mixed = nn.Dense(
          1, use_bias=False, dtype=self.dtype, param_dtype=self.dtype, name="force_vectors"
        )
        per_node = per_node + mixed(jnp.swapaxes(vec[0], 1, 2))[..., 0]
      forces = per_node.reshape(b, per, 3)[:, :n]
    forces = forces * graph.nodes["real"].reshape(b, per)[:, :n, None]
    # Stress.
    if self.stress_head == "virial":
      w = self._edge_scalars("stress", v, e, u, graph, b, envelope)
      outer = w[:, :, None] * vectors[:, :, None] * unit[:, None, :]
      volume = jnp.maximum(graph.globals["volume"].astype(self.dtype), 1e-6)
      virial = jnp.sum(outer.reshape(b, -1, 3, 3), axis=1) * (VIRIAL_VOLUME / volume)[:, None, None]
      iso = dense(1)(mlp()(u))[:, 0]
      stress = virial + iso[:, None, None] * jnp.eye(3, dtype=self.dtype)
    elif p:
      fict = mlp()(vs[:, n:])
      u_fict = jnp.broadcast_to(u[:, None, :], (b, p, u.shape[-1]))
      rows = dense(3)(jnp.concatenate([fict, u_fict], axis=-1))  # [B, 3, 3], row k from node k
      stress = 0.5 * (rows + jnp.swapaxes(rows, -1, -2))
    else:
      pooled = megnet.set2set_readout(v, e, graph, steps=self.set2set_steps, dtype=self.dtype)
      hidden = mlp()(jnp.concatenate([pooled, u], axis=-1))
      stress = _voigt_to_matrix(dense(6)(hidden))
    stress = stress * graph.globals["mask"][:, None, None]
    return forces, stress


def network(config: ml_collections.ConfigDict) -> ForceStressNet:
  """The flax module for ``config``."""
  return ForceStressNet(
    **megnet.module_kwargs(config),
    stress_head=config.stress_head,
    force_head=config.force_head,
  )


def make_graph(
  config: ml_collections.ConfigDict, crystals: Crystals, *, capacity: int
) -> tuple[jraph.GraphsTuple, jax.Array]:
  """The model's graph of a batch and the overflow flags ``[B]`` (jittable, ``capacity`` static)."""
  return megnet.model_graph(config, crystals, capacity=capacity, fictitious=fictitious_kind(config))


def default_normalization(dtype=jnp.float32) -> dict[str, jax.Array]:
  """Mean 0, std 1 in the stored shapes."""
  return {
    "force_mean": jnp.zeros((3,), dtype),
    "force_std": jnp.ones((3,), dtype),
    "stress_mean": jnp.zeros((3, 3), dtype),
    "stress_std": jnp.ones((3, 3), dtype),
  }


def init(config: ml_collections.ConfigDict, rng: jax.Array, crystals: Crystals) -> dict:
  """Random parameters and default normalisation (mean 0, std 1).

  Args:
    config: model config (validated here).
    rng: PRNG key.
    crystals: an example batch (only shapes matter; may be numpy).

  Returns:
    ``{'params': ..., 'normalization': {...}}``.
  """
  validate_config(config)
  params = megnet.init_params(network(config), make_graph, config, rng, crystals)
  return {"params": params, "normalization": default_normalization(jnp.dtype(config.dtype))}


def set_normalization(variables: dict, *, force_mean, force_std, stress_mean, stress_std) -> dict:
  """A copy of ``variables`` with new standardisation statistics.

  Args:
    force_mean, force_std: eV/Å, scalar or ``[3]`` (per Cartesian component).
    stress_mean, stress_std: kBar, scalar or ``[3, 3]``.
  """
  dtype = variables["normalization"]["force_mean"].dtype
  norm = {
    "force_mean": jnp.broadcast_to(jnp.asarray(force_mean, dtype), (3,)),
    "force_std": jnp.broadcast_to(jnp.asarray(force_std, dtype), (3,)),
    "stress_mean": jnp.broadcast_to(jnp.asarray(stress_mean, dtype), (3, 3)),
    "stress_std": jnp.broadcast_to(jnp.asarray(stress_std, dtype), (3, 3)),
  }
  if not all(bool(np.all(np.asarray(norm[k]) > 0)) for k in ("force_std", "stress_std")):
    raise ValueError("normalisation std must be > 0")
  return {**variables, "normalization": norm}


def equivariant_outputs(config: ml_collections.ConfigDict) -> tuple[bool, bool]:
  """``(forces, stress)``: whether the network's standardised output is rotation-equivariant by
  construction (edge force head / virial stress head on rotation-invariant ``rbf`` edges)."""
  invariant_edges = config.edge_inputs == "rbf"
  return (
    invariant_edges and config.force_head == "edge",
    invariant_edges and config.stress_head == "virial",
  )


def output_normalization(config: ml_collections.ConfigDict, norm: dict) -> dict:
  """The de-standardisation constants that :func:`apply` uses.

  The trainer stores one mean over all nine stress components (and over the three force
  components), broadcast to ``[3, 3]`` (``[3]``).  Added to an equivariant output, such a
  constant breaks equivariance: ``m`` on the off-diagonal components does not rotate with the
  cell.  For equivariant outputs (:func:`equivariant_outputs`) the constant is replaced by its
  rotation average, ``tr(mean) / 3 * I`` for stress and zero for forces, with the std averaged
  over components: exactly the model averaged over the 24 rotations of the cube
  (:class:`crystal_search.force_fields.ensemble.RotationAveragedForceField`), at the cost of
  one call.  Pressure (``-tr(sigma) / 3``) is unchanged; the networks and their training are
  unchanged (the loss is taken on standardised outputs and targets).
  """
  forces_eq, stress_eq = equivariant_outputs(config)
  out = dict(norm)
  if stress_eq:
    mean = jnp.asarray(norm["stress_mean"])
    out["stress_mean"] = jnp.trace(mean) / 3.0 * jnp.eye(3, dtype=mean.dtype)
    out["stress_std"] = jnp.full((3, 3), jnp.mean(norm["stress_std"]), mean.dtype)
  if forces_eq:
    mean = jnp.asarray(norm["force_mean"])
    out["force_mean"] = jnp.zeros_like(mean)
    out["force_std"] = jnp.full((3,), jnp.mean(norm["force_std"]), mean.dtype)
  return out


def normalize_targets(variables: dict, forces: jax.Array, stress: jax.Array):
  """Standardise targets: ``forces [B, N, 3]`` eV/Å, ``stress [B, 3, 3]`` kBar -> same shapes."""
  n = variables["normalization"]
  return (forces - n["force_mean"]) / n["force_std"], (stress - n["stress_mean"]) / n["stress_std"]


def apply_graph(
  config: ml_collections.ConfigDict, params, graph: jraph.GraphsTuple
) -> tuple[jax.Array, jax.Array]:
  """Standardised ``(forces [B, N, 3], stress [B, 3, 3])`` of a prebuilt graph."""
  return network(config).apply({"params": params}, graph)


def apply(
  config: ml_collections.ConfigDict, variables: dict, crystals: Crystals, *, capacity: int
) -> Prediction:
  """Forces and stress of a batch (pure JAX; jit with ``static_argnames='capacity'``).

  Args:
    config: model config (closed over or static).
    variables: from :func:`init` / :func:`set_normalization` / a saved model.
    crystals: ``B`` structures, ``N`` slots.
    capacity: neighbour edges per structure (static); see
      :func:`crystal_search.graphs.required_capacity`.

  Returns:
    :class:`Prediction`.
  """
  graph, overflow = make_graph(config, crystals, capacity=capacity)
  fn, sn = apply_graph(config, variables["params"], graph)
  n = output_normalization(config, variables["normalization"])
  mask = jnp.asarray(crystals.mask)[..., None]
  real = (jnp.asarray(crystals.n_atoms) > 0)[:, None, None]
  forces = jnp.where(mask, fn * n["force_std"] + n["force_mean"], 0.0)
  stress = jnp.where(real, sn * n["stress_std"] + n["stress_mean"], 0.0)
  return Prediction(
    forces_normalized=fn,
    stress_normalized=sn,
    forces=forces,
    stress=stress,
    overflow=overflow,
  )
