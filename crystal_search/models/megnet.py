"""MEGNet trunk (Chen et al. 2019) on the graphs of :mod:`crystal_search.graphs`.

Each block updates edges from ``(e_ij, v_i, v_j, u)``, nodes from the mean of
their incoming edges, ``v_i`` and ``u``, and the global state from the means of
the *real* nodes and edges and ``u``; each update is a two-layer MLP of
``config.width`` and is added to its input (MEGNet's residual connections).

Fictitious nodes (planes or corners) never influence real atoms: their edges
point only atom -> fictitious node (so no real atom aggregates them), and the
global mean that feeds every atom leaves fictitious nodes and edges out.  They
do read the atoms and the global state.

Every array lives in a dense per-structure layout: the ``GraphsTuple`` of
:func:`crystal_search.graphs.build_graph` has the same node and edge count per
structure, so per-structure reductions are reshapes; node aggregation uses
``jax.ops.segment_sum`` on global indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
from pymatgen.core import Element

from crystal_search import graphs
from crystal_search.crystals import Crystals
from crystal_search.errors import InputError


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """``'softplus'`` or ``'silu'``."""
  return {"softplus": jax.nn.softplus, "silu": jax.nn.silu}[name]


def element_table(elements: Sequence[str]) -> np.ndarray:
  """Lookup ``[119]`` int32 from atomic number to embedding index (unknown -> 0)."""
  table = np.zeros(119, np.int32)
  for k, symbol in enumerate(elements):
    table[Element(symbol).Z] = k
  return table


def check_elements(config, structures_or_numbers) -> None:
  """Raise :class:`InputError` naming every element the model does not know.

  Args:
    config: model config (``config.elements``).
    structures_or_numbers: pymatgen structures, a ``Crystals`` batch, or atomic
      numbers (any int array; 0 = padding is ignored).
  """
  known = {Element(s).Z for s in config.elements}
  numbers: set[int] = set()
  if hasattr(structures_or_numbers, "atomic_numbers") and not isinstance(
    structures_or_numbers, Iterable
  ):
    numbers = set(np.asarray(structures_or_numbers.atomic_numbers).ravel().tolist())
  else:
    items = structures_or_numbers
    if isinstance(items, np.ndarray | jax.Array):
      numbers = set(np.asarray(items).ravel().tolist())
    else:
      for item in items:
        if hasattr(item, "atomic_numbers"):
          numbers |= set(int(z) for z in item.atomic_numbers)
        else:
          numbers |= set(np.asarray(item).ravel().tolist())
  unknown = sorted(int(z) for z in numbers - known - {0})
  if unknown:
    names = ", ".join(Element.from_Z(z).symbol for z in unknown)
    raise InputError(
      f"element(s) {names} not supported by the model (known: {', '.join(config.elements)})"
    )


class GatherDense(nn.Module):
  """``nn.Dense`` on the concatenation ``[g_0(x_0), g_1(x_1), ...]`` of gathered parts, computed as
  ``sum_k g_k(x_k @ W_k) + b``: each part is projected *before* it is gathered or repeated.

  The parameters are those of ``nn.Dense(features)`` on the concatenation (``kernel [sum_k d_k,
  features]`` split by rows into the ``W_k``, ``bias [features]``, the same initialisers), so a
  trained model loads unchanged; the result equals it up to float rounding.  An edge update
  ``Dense([e_ij, v_i, v_j, u])`` then costs one ``width x width`` product per edge instead of four,
  the node and global parts being projected once per node and per structure.
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, parts: Sequence[tuple[jax.Array, Callable[[jax.Array], jax.Array] | None]]):
    """``parts``: ``(x_k [M_k, d_k], g_k)`` with ``g_k`` mapping ``[M_k, features]`` to the output
    rows (a gather or repeat; None: the rows are the output's)."""
    total = sum(x.shape[-1] for x, _ in parts)
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (total, self.features), self.dtype
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.dtype)
    out, start = None, 0
    for x, gather in parts:
      d = x.shape[-1]
      y = jnp.asarray(x, self.dtype) @ kernel[start : start + d]
      start += d
      y = gather(y) if gather is not None else y
      out = y if out is None else out + y
    return out + bias


class MLP(nn.Module):
  """Dense layers with an activation after each (also the last, unless ``activate_last=False``).

  The input is an array, or a list of gathered parts (see :class:`GatherDense`) that the first
  layer reads as their concatenation without building it.
  """

  widths: Sequence[int]
  act: str = "softplus"
  activate_last: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x) -> jax.Array:
    f = activation(self.act)
    for k, w in enumerate(self.widths):
      if k == 0 and isinstance(x, list | tuple):
        x = GatherDense(w, dtype=self.dtype, name="Dense_0")(x)
      else:
        x = nn.Dense(w, dtype=self.dtype, param_dtype=self.dtype, name=f"Dense_{k}")(x)
      if self.activate_last or k < len(self.widths) - 1:
        x = f(x)
    return x


def edge_parts(e: jax.Array, v: jax.Array, u: jax.Array, graph: jraph.GraphsTuple) -> list:
  """The parts of an edge's input ``[e_ij, v_i, v_j, u]`` (``i`` the receiver) for an
  :class:`MLP`: the edge state, the two atoms' states gathered along the edges, the global
  state repeated over each structure's edges."""
  per = e.shape[0] // u.shape[0]
  return [
    (e, None),
    (v, lambda y: y[graph.receivers]),
    (v, lambda y: y[graph.senders]),
    (u, lambda y: jnp.repeat(y, per, axis=0)),
  ]


def _per_graph_mean(x: jax.Array, mask: jax.Array, num_graphs: int) -> jax.Array:
  """Mean over the masked rows of each graph: ``x [G*M, d]``, ``mask [G*M]`` -> ``[G, d]``."""
  x = x.reshape(num_graphs, -1, x.shape[-1])
  m = mask.reshape(num_graphs, -1, 1).astype(x.dtype)
  return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


#: Neighbour count that normalises smooth (envelope-weighted) sums over edges.
SMOOTH_NEIGHBORS = 16.0


def cosine_envelope(distances: jax.Array, cutoff: float) -> jax.Array:
  """``(cos(pi d / r_c) + 1) / 2`` for ``d < r_c``, else 0 (continuous with its derivative)."""
  x = jnp.clip(distances / cutoff, 0.0, 1.0)
  return 0.5 * (jnp.cos(jnp.pi * x) + 1.0)


def radial_basis(distances: jax.Array, cutoff: float, num: int) -> jax.Array:
  """Gaussians ``[..., num]`` of ``distances [..., 1]`` (Å) centred on ``linspace(0, r_c)``."""
  centers = jnp.linspace(0.0, cutoff, num, dtype=distances.dtype)
  width = cutoff / (num - 1)
  return jnp.exp(-(((distances - centers) / width) ** 2))


class MEGNetBlock(nn.Module):
  """One MEGNet block with residual connections (see module docstring).

  With ``edge_weight`` (``[Ed, 1]``, the cosine envelope of each edge's length, zero on
  padding) the block is *smooth*: nodes sum their incoming edges weighted by it and divided by
  :data:`SMOOTH_NEIGHBORS`, and the global state takes envelope-weighted edge means, so the
  outputs are continuous when an atom crosses the cutoff (MEGNet's plain means are not).

  With ``vector_channels`` ``C > 0`` (ours, after PaiNN, Schütt et al. 2021) each atom also
  carries ``C`` Cartesian vectors ``vec [V, C, 3]`` (Å-free, rotating with the cell).  The block
  first sends them along the edges, filtered by the new edge state (rotation-invariant):
  ``vec_i += sum_j env_ij (a_ij * vec_j + b_ij * r_ij / |r_ij|) / SMOOTH_NEIGHBORS``; the node
  update then also reads the invariants ``|V vec_i|`` and ``<U vec_i, V vec_i>`` (``U``, ``V``
  linear maps of the channels), which carry bond angles that the distance-only edges cannot;
  last, ``vec_i += g(v_new_i) * U vec_i``.  Scalars stay rotation-invariant, vectors
  equivariant.
  """

  width: int
  act: str = "softplus"
  dtype: jnp.dtype = jnp.float32
  vector_channels: int = 0

  @nn.compact
  def __call__(
    self,
    v: jax.Array,
    e: jax.Array,
    u: jax.Array,
    graph: jraph.GraphsTuple,
    edge_weight: jax.Array | None = None,
    vec: jax.Array | None = None,
    unit: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(v, e, u)`` updated, and ``vec`` ``[V, C, 3]`` when ``vector_channels`` is set
    (then ``unit`` ``[Ed, 3]``, the unit bond vectors, zero on padding edges, is needed too)."""
    num_graphs = graph.n_node.shape[0]
    num_nodes = v.shape[0]
    node_mask = graph.nodes["mask"][:, None].astype(v.dtype)
    edge_mask = graph.edges["mask"][:, None].astype(e.dtype)
    u_nodes = jnp.repeat(u, num_nodes // num_graphs, axis=0)
    mlp = lambda: MLP((self.width, self.width), self.act, dtype=self.dtype)

    e_new = mlp()(edge_parts(e, v, u, graph)) * edge_mask
    if edge_weight is None:
      summed = jax.ops.segment_sum(e_new, graph.receivers, num_segments=num_nodes)
      degree = jax.ops.segment_sum(edge_mask, graph.receivers, num_segments=num_nodes)
      agg = summed / jnp.maximum(degree, 1.0)
    else:
      weighted = e_new * edge_weight
      agg = jax.ops.segment_sum(weighted, graph.receivers, num_segments=num_nodes)
      agg = agg / SMOOTH_NEIGHBORS
    node_in = [agg, v, u_nodes]
    c = self.vector_channels
    if c:
      if edge_weight is None or vec is None or unit is None:
        raise ValueError(
          "vector channels need smooth (rbf) edges, the atoms' vectors and the unit bond vectors"
        )
      dense = lambda k, name, bias=True: nn.Dense(
        k, use_bias=bias, dtype=self.dtype, param_dtype=self.dtype, name=name
      )
      filters = dense(2 * c, "vector_filter")(e_new) * edge_weight
      a, b = filters[:, :c, None], filters[:, c:, None]
      message = a * vec[graph.senders] + b * unit[:, None, :]  # [Ed, C, 3]
      vec = vec + jax.ops.segment_sum(message, graph.receivers, num_segments=num_nodes) / (
        SMOOTH_NEIGHBORS
      )
      # Channel mixing acts on the C axis only, so it commutes with rotations.
      mix_u = dense(c, "vector_mix_u", bias=False)(jnp.swapaxes(vec, 1, 2))  # [V, 3, C]
      mix_v = dense(c, "vector_mix_v", bias=False)(jnp.swapaxes(vec, 1, 2))
      norms = graphs.safe_norm(jnp.swapaxes(mix_v, 1, 2))[..., 0]  # [V, C]
      dots = jnp.sum(mix_u * mix_v, axis=1)  # [V, C]
      node_in += [norms, dots]
    v_new = mlp()(jnp.concatenate(node_in, axis=-1)) * node_mask
    if c:
      gate = nn.Dense(c, dtype=self.dtype, param_dtype=self.dtype, name="vector_gate")(v_new)
      vec = (vec + gate[:, :, None] * jnp.swapaxes(mix_u, 1, 2)) * node_mask[:, :, None]
    # The global state reads real atoms and real edges only.
    v_mean = _per_graph_mean(v_new, graph.nodes["real"], num_graphs)
    if edge_weight is None:
      e_mean = _per_graph_mean(e_new, graph.edges["real"], num_graphs)
    else:
      w = (edge_weight[:, 0] * graph.edges["real"].astype(e.dtype)).reshape(num_graphs, -1, 1)
      es = e_new.reshape(num_graphs, -1, e_new.shape[-1])
      e_mean = jnp.sum(es * w, axis=1) / (jnp.sum(w, axis=1) + 1.0)
    u_new = mlp()(jnp.concatenate([e_mean, v_mean, u], axis=-1))
    u_new = u_new * graph.globals["mask"][:, None].astype(u.dtype)
    if c:
      return v + v_new, e + e_new, u + u_new, vec
    return v + v_new, e + e_new, u + u_new


class MEGNet(nn.Module):
  """Embedding + ``num_blocks`` MEGNet blocks.

  Attributes:
    elements: element symbols (embedding indices follow this order).
    num_fictitious: fictitious node kinds (3 or 0); each gets its own embedding.
    plane_inputs: append the atom-plane distances (Å) to the atom inputs
      (the ``'global'`` stress head of appendix 7.4).
    edge_inputs: ``'vector'`` (the paper: ``(r_ij, |r_ij|, |r_ij|^2)``, not rotation
      invariant) or ``'rbf'`` (``num_rbf`` Gaussians of ``|r_ij|`` times the cosine
      envelope of ``cutoff`` Å: rotation invariant, and every block smooth at the cutoff).
    vector_channels: equivariant vectors per atom (0: none, MEGNet as published); see
      :class:`MEGNetBlock`.  Needs ``edge_inputs='rbf'``.  With them :meth:`__call__` also
      returns the atoms' vectors.
  """

  elements: tuple[str, ...]
  embed_dim: int = 16
  num_blocks: int = 7
  width: int = 64
  act: str = "softplus"
  num_fictitious: int = 3
  plane_inputs: bool = False
  edge_inputs: str = "vector"
  cutoff: float = 4.0
  num_rbf: int = 16
  vector_channels: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple):
    """Returns ``(nodes [V, width], edges [Ed, width], globals [B, width])``, and with
    ``vector_channels`` ``C`` also ``vectors [V, C, 3]`` (rotation-equivariant, zero on
    padding)."""
    num_graphs = graph.n_node.shape[0]
    table = jnp.asarray(element_table(self.elements))
    kind = graph.nodes["kind"]
    index = jnp.where(
      kind > 0,
      len(self.elements) + kind - 1,
      table[jnp.clip(graph.nodes["atomic_numbers"], 0, 118)],
    )
    v = nn.Embed(
      len(self.elements) + self.num_fictitious,
      self.embed_dim,
      dtype=self.dtype,
      param_dtype=self.dtype,
    )(index)
    if self.plane_inputs:
      v = jnp.concatenate([v, graph.nodes["plane_distances"].astype(self.dtype)], axis=-1)
    node_mask = graph.nodes["mask"][:, None].astype(self.dtype)
    edge_mask = graph.edges["mask"][:, None].astype(self.dtype)
    v = MLP((self.width,), self.act, dtype=self.dtype)(v) * node_mask
    if self.edge_inputs == "vector":
      features, weight = graph.edges["features"].astype(self.dtype), None
    else:
      d, unit = graphs.unit_vectors(graph.edges["vectors"].astype(self.dtype))  # 0 on padding
      weight = cosine_envelope(d, self.cutoff) * edge_mask
      features = radial_basis(d, self.cutoff, self.num_rbf) * weight
    e = MLP((self.width,), self.act, dtype=self.dtype)(features)
    e = e * edge_mask
    u = jnp.zeros((num_graphs, self.width), self.dtype)  # global state starts at 0
    c = self.vector_channels
    if not c:
      for _ in range(self.num_blocks):
        v, e, u = MEGNetBlock(self.width, self.act, self.dtype)(v, e, u, graph, weight)
      return v, e, u
    if self.edge_inputs != "rbf":
      raise ValueError("vector_channels need edge_inputs='rbf' (smooth edges)")
    vec = jnp.zeros((v.shape[0], c, 3), self.dtype)  # vectors start at 0
    for _ in range(self.num_blocks):
      block = MEGNetBlock(self.width, self.act, self.dtype, vector_channels=c)
      v, e, u, vec = block(v, e, u, graph, weight, vec, unit)
    return v, e, u, vec


class Set2Set(nn.Module):
  """Set2set readout (Vinyals et al. 2016) of ``x [G, M, d]`` with ``mask [G, M]`` -> ``[G, 2d]``."""

  steps: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    g, _, d = x.shape
    cell = nn.LSTMCell(features=d, dtype=self.dtype, param_dtype=self.dtype)
    carry = (jnp.zeros((g, d), self.dtype), jnp.zeros((g, d), self.dtype))
    q_star = jnp.zeros((g, 2 * d), self.dtype)
    m = mask.astype(self.dtype)
    for _ in range(self.steps):
      carry, q = cell(carry, q_star)
      logits = jnp.einsum("gmd,gd->gm", x, q)
      logits = jnp.where(mask, logits, -1e9)
      logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
      w = jnp.exp(logits) * m
      a = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-30)
      r = jnp.einsum("gm,gmd->gd", a, x)
      q_star = jnp.concatenate([q, r], axis=-1)
    return q_star


def set2set_readout(
  v: jax.Array, e: jax.Array, graph: jraph.GraphsTuple, *, steps: int, dtype
) -> jax.Array:
  """Set2set of the real nodes and of the real edges, per structure: ``[B, 4 * width]``."""
  num_graphs = graph.n_node.shape[0]
  vs = v.reshape(num_graphs, -1, v.shape[-1])
  es = e.reshape(num_graphs, -1, e.shape[-1])
  node_part = Set2Set(steps, dtype)(vs, graph.nodes["real"].reshape(num_graphs, -1))
  edge_part = Set2Set(steps, dtype)(es, graph.edges["real"].reshape(num_graphs, -1))
  return jnp.concatenate([node_part, edge_part], axis=-1)


def module_kwargs(config) -> dict:
  """The constructor arguments every network here shares, read from a model config."""
  return dict(
    elements=tuple(config.elements),
    embed_dim=config.embed_dim,
    num_blocks=config.num_blocks,
    width=config.width,
    head_widths=tuple(config.head_widths),
    act=config.activation,
    set2set_steps=config.set2set_steps,
    edge_inputs=config.edge_inputs,
    cutoff=float(config.cutoff),
    vector_channels=int(config.vector_channels),
    dtype=jnp.dtype(config.dtype),
  )


def cast_crystals(config, crystals: Crystals) -> Crystals:
  """``crystals`` as JAX arrays in the model's float dtype (positions, lattice)."""
  dtype = jnp.dtype(config.dtype)
  return Crystals(
    positions=jnp.asarray(crystals.positions, dtype),
    lattice=jnp.asarray(crystals.lattice, dtype),
    atomic_numbers=jnp.asarray(crystals.atomic_numbers, jnp.int32),
    mask=jnp.asarray(crystals.mask, bool),
    n_atoms=jnp.asarray(crystals.n_atoms, jnp.int32),
  )


def model_graph(
  config, crystals: Crystals, *, capacity: int, fictitious: str | None
) -> tuple[jraph.GraphsTuple, jax.Array]:
  """The graph of a batch for a model config, and overflow flags ``[B]`` (jittable)."""
  return graphs.graph_from_crystals(
    cast_crystals(config, crystals),
    cutoff=float(config.cutoff),
    capacity=capacity,
    images=int(config.max_images),
    fictitious=fictitious,
  )


def init_params(module: nn.Module, make_graph: Callable, config, rng: jax.Array, crystals):
  """Random parameters of ``module`` on the graph ``make_graph(config, crystals, capacity=)``.

  The capacity is the example batch's own (only shapes matter); ``config`` must be validated.
  """
  import ml_collections

  capacity = max(1, graphs.required_capacity(crystals, float(config.cutoff)))
  graph, _ = jax.jit(make_graph, static_argnums=0, static_argnames="capacity")(
    ml_collections.FrozenConfigDict(config), crystals, capacity=capacity
  )
  return jax.jit(module.init)(rng, graph)["params"]
