"""Periodic neighbour lists and graphs with fictitious plane atoms, inside jit.

Two stages, in the jax-md style (allocate outside jit, update inside, check
overflow, reallocate):

1. :func:`neighbor_list` returns ``(allocate_fn, update_fn)``.  ``allocate_fn``
   runs on the host, sizes a static per-structure edge ``capacity`` and a
   static image range ``images`` from the batch (:func:`required_capacity`,
   :func:`required_images`) and builds a :class:`Neighbors` state;
   ``update_fn`` rebuilds the state for new positions/lattices with the same
   static shapes inside jit.  :func:`compute_neighbors` is the jittable core.
2. :func:`build_graph` turns a batch and its :class:`Neighbors` into one
   ``jraph.GraphsTuple`` with static shapes: per structure ``N`` atom slots plus
   ``P`` fictitious nodes (3 plane nodes, 3 corner nodes, or none) and
   ``capacity`` atom–atom edges plus ``P * N`` fictitious edges.

Neighbours.  Every ordered pair ``(i, j, image)`` with ``0 < |r_ij| <= cutoff``
is an edge, periodic images included, so a small or skewed cell can give an
atom several images of the same neighbour and of itself (the self pair with a
zero shift is excluded).  The edge vector is the paper's ``r_ij = r_i - r_j``
(``i`` receives, ``j`` sends).  Candidates are the minimum-image fractional
difference plus every integer shift in ``[-images, images]^3`` (jax-md's
``space.periodic_general`` minimum image alone is wrong once the cutoff
exceeds half a cell width).  A shift range is enough for a structure when
``images >= floor(cutoff / h_k + 1/2)`` for the three cell heights ``h_k``;
otherwise, or when a structure has more edges than ``capacity``, its
``overflow`` flag is set (edges are never silently dropped without it).

Fictitious nodes (paper section 3.3 and appendix 7.4).  Plane node ``k`` stands
for the lattice plane through the origin spanned by the two other lattice
vectors ((100), (010), (001) for k = 0, 1, 2).  It is joined to every real
atom by the vector from the plane to the atom: the component of the atom's
Cartesian position (wrapped into the cell) along the plane's unit normal,
``f_k h_k n_k``.  Corner node ``k`` sits on the cell corner at lattice vector
``a_k``; its edge vector is ``r_atom - a_k`` (wrapped atom).  Fictitious edges
point atom -> fictitious node only, so fictitious nodes receive messages and
never send any to atoms.

Units: Å; positions fractional; lattice vectors are rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from flax import struct

from crystal_search.crystals import Crystals

#: Default neighbour cutoff (Å), the paper's.
DEFAULT_CUTOFF = 4.0
#: Default half-width of the integer image range per axis (enough for cell
#: heights above ``cutoff / 2.5`` = 1.6 Å at the default cutoff).
DEFAULT_IMAGES = 2
#: Kinds of fictitious nodes.
FICTITIOUS_KINDS = ("plane", "corner", None)


@struct.dataclass
class Neighbors:
  """Per-structure neighbour lists with a static edge capacity ``E``.

  Attributes:
    receivers: ``[B, E]`` int32, atom index ``i`` (receives the message).
    senders: ``[B, E]`` int32, atom index ``j`` (sends the message).
    shifts: ``[B, E, 3]`` float, integer-valued fractional shift ``T`` with
      ``r_ij = (p_i - p_j + T) @ lattice`` for the *given* (unwrapped)
      fractional positions ``p``.
    mask: ``[B, E]`` bool, True for real edges (the first ``count`` slots).
    count: ``[B]`` int32, number of edges found (may exceed ``E`` on overflow).
    overflow: ``[B]`` bool, True when ``count > E`` or the image range is too
      small for the cell; the lists of that structure are then incomplete.
    cutoff: static, Å.
    images: static, half-width of the integer shift range per axis.
  """

  receivers: jax.Array
  senders: jax.Array
  shifts: jax.Array
  mask: jax.Array
  count: jax.Array
  overflow: jax.Array
  cutoff: float = struct.field(pytree_node=False, default=DEFAULT_CUTOFF)
  images: int = struct.field(pytree_node=False, default=DEFAULT_IMAGES)

  @property
  def capacity(self) -> int:
    return self.receivers.shape[-1]


# ----------------------------------------------------------------------------
# Host-side sizing (numpy).


def cell_heights(lattice: np.ndarray) -> np.ndarray:
  """Distances between opposite cell faces ``[..., 3]`` (Å) of lattices ``[..., 3, 3]`` (rows)."""
  lattice = np.asarray(lattice, np.float64)
  inv = np.linalg.inv(lattice)  # columns are the reciprocal vectors b_k (a_i . b_k = delta_ik)
  return 1.0 / np.linalg.norm(inv, axis=-2)


def required_images(crystals: Crystals, cutoff: float = DEFAULT_CUTOFF) -> int:
  """Smallest static image half-width that finds every neighbour in the batch.

  ``max_k floor(cutoff / h_k + 1/2)`` over the real structures (padding
  structures are ignored); at least 1.
  """
  heights = cell_heights(np.asarray(crystals.lattice))
  real = np.asarray(crystals.n_atoms) > 0
  if not np.any(real):
    return 1
  need = np.floor(cutoff / heights[real] + 0.5)
  return max(1, int(need.max()))


def _count_edges_numpy(frac: np.ndarray, lattice: np.ndarray, cutoff: float, images: int) -> int:
  frac = frac % 1.0
  d = frac[:, None, :] - frac[None, :, :]
  d -= np.round(d)
  rng = np.arange(-images, images + 1)
  shifts = np.array(list(itertools.product(rng, rng, rng)), np.float64)
  count = 0
  n = frac.shape[0]
  for s in shifts:
    r = (d + s) @ lattice
    dist2 = np.sum(r * r, axis=-1)
    ok = dist2 <= cutoff * cutoff
    if not np.any(s):
      ok &= ~np.eye(n, dtype=bool)
    count += int(np.sum(ok))
  return count


def edge_counts(crystals: Crystals, cutoff: float = DEFAULT_CUTOFF) -> np.ndarray:
  """Number of directed edges ``[B]`` of every structure (host-side, numpy, float64)."""
  positions = np.asarray(crystals.positions, np.float64)
  lattice = np.asarray(crystals.lattice, np.float64)
  n_atoms = np.asarray(crystals.n_atoms)
  heights = cell_heights(lattice)
  out = np.zeros(len(n_atoms), np.int64)
  for b, n in enumerate(n_atoms):
    if n == 0:
      continue
    images = int(np.floor(cutoff / heights[b].min() + 0.5))  # 0: minimum image suffices
    out[b] = _count_edges_numpy(positions[b, :n], lattice[b], cutoff, images)
  return out


def required_capacity(crystals: Crystals, cutoff: float = DEFAULT_CUTOFF) -> int:
  """Largest number of directed edges of one structure in the batch (host-side, numpy); >= 1."""
  counts = edge_counts(crystals, cutoff)
  return max(1, int(counts.max(initial=0)))


# ----------------------------------------------------------------------------
# Jittable neighbour search.


def reciprocal_rows(lattice: jax.Array) -> jax.Array:
  """Rows ``b_k`` with ``a_i . b_k = delta_ik`` (``inv(lattice).T``) of ``[..., 3, 3]`` lattices.

  Cross products instead of ``jnp.linalg.inv`` (much cheaper to compile).
  """
  a0, a1, a2 = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
  c = jnp.stack([jnp.cross(a1, a2), jnp.cross(a2, a0), jnp.cross(a0, a1)], axis=-2)
  det = jnp.sum(a0 * c[..., 0, :], axis=-1)
  return c / det[..., None, None]


def _shift_grid(images: int, dtype) -> jax.Array:
  rng = range(-images, images + 1)
  return jnp.asarray(list(itertools.product(rng, rng, rng)), dtype)


def _neighbors_one(
  positions: jax.Array,
  lattice: jax.Array,
  mask: jax.Array,
  *,
  cutoff: float,
  capacity: int,
  images: int,
):
  """Neighbour list of one structure (see :func:`compute_neighbors`)."""
  n = positions.shape[0]
  dtype = positions.dtype
  floor = jnp.floor(positions)
  wrapped = positions - floor
  d = wrapped[:, None, :] - wrapped[None, :, :]  # [N, N, 3], f_i - f_j in (-1, 1)
  rounded = jnp.round(d)
  d = d - rounded  # minimum image in fractional coordinates, [-0.5, 0.5]
  shifts = _shift_grid(images, dtype)  # [S, 3]
  cart = jnp.einsum("ijk,kl->ijl", d, lattice)  # [N, N, 3]
  shift_cart = shifts @ lattice  # [S, 3]
  r = cart[:, :, None, :] + shift_cart[None, None, :, :]  # [N, N, S, 3]
  dist2 = jnp.sum(r * r, axis=-1)  # [N, N, S]
  pair = mask[:, None] & mask[None, :]
  zero_shift = jnp.all(shifts == 0, axis=-1)  # [S]
  self_pair = jnp.eye(n, dtype=bool)[:, :, None] & zero_shift[None, None, :]
  valid = (dist2 <= cutoff * cutoff) & pair[:, :, None] & ~self_pair
  # Compaction without scattering all N*N*S candidates: slot e belongs to the pair whose
  # running edge count first exceeds e, and to the k-th valid shift of that pair.
  s_count = shifts.shape[0]
  valid = valid.reshape(n * n, s_count)
  per_pair = jnp.sum(valid, axis=1, dtype=jnp.int32)  # [N*N]
  running = jnp.cumsum(per_pair)  # inclusive
  count = running[-1]
  slots = jnp.arange(capacity, dtype=jnp.int32)
  pair = jnp.minimum(jnp.searchsorted(running, slots, side="right"), n * n - 1)
  k = slots - (running[pair] - per_pair[pair])
  row = valid[pair]  # [E, S]
  rank = jnp.cumsum(row, axis=1, dtype=jnp.int32) - 1
  s = jnp.argmax(row & (rank == k[:, None]), axis=1)
  edge_mask = slots < count
  i = pair // n
  j = pair % n
  # Total integer shift so that r_ij = (p_i - p_j + T) @ lattice for the given positions.
  total = -floor[i] + floor[j] - rounded[i, j] + shifts[s]
  total = jnp.where(edge_mask[:, None], total, 0.0)
  i = jnp.where(edge_mask, i, 0).astype(jnp.int32)
  j = jnp.where(edge_mask, j, 0).astype(jnp.int32)
  return i, j, total, edge_mask, count


def compute_neighbors(
  crystals: Crystals,
  *,
  cutoff: float = DEFAULT_CUTOFF,
  capacity: int,
  images: int = DEFAULT_IMAGES,
) -> Neighbors:
  """Neighbour lists of a batch, jittable (``cutoff``, ``capacity``, ``images`` static).

  The work grows as ``(2k+1)^3`` with the image half-width ``k``; structures
  are processed one after the other (``lax.map``), each with the smallest
  ``k <= images`` that serves it, chosen at run time with ``lax.switch``
  (``k = 0`` for cells thicker than twice the cutoff).

  Args:
    crystals: ``B`` structures with ``N`` slots; positions ``[B, N, 3]``
      fractional (any image), lattice ``[B, 3, 3]`` rows, Å.
    cutoff: Å.
    capacity: edges per structure ``E``.
    images: largest integer shift half-width tried on top of the minimum
      image; a structure needing more is flagged in ``overflow``.

  Returns:
    :class:`Neighbors` with ``[B, E]`` lists; edges ordered by receiver, then
    sender, then shift.
  """
  positions = jax.lax.stop_gradient(jnp.asarray(crystals.positions))
  lattice = jax.lax.stop_gradient(jnp.asarray(crystals.lattice))
  mask = jnp.asarray(crystals.mask)
  need = jnp.floor(cutoff * jnp.linalg.norm(reciprocal_rows(lattice), axis=-1) + 0.5)  # [B, 3]
  need = jnp.where(jnp.any(mask, axis=1, keepdims=True), need, 0).max(axis=1)  # [B]
  image_overflow = need > images
  level = jnp.clip(need, 0, images).astype(jnp.int32)  # [B]

  def branch(k):
    return lambda ops: _neighbors_one(*ops, cutoff=cutoff, capacity=capacity, images=k)

  branches = [branch(k) for k in range(images + 1)]
  # One structure at a time, each with its own image range.
  i, j, t, m, count = jax.lax.map(
    lambda args: jax.lax.switch(args[0], branches, args[1:]), (level, positions, lattice, mask)
  )
  return Neighbors(
    receivers=i,
    senders=j,
    shifts=t,
    mask=m,
    count=count,
    overflow=(count > capacity) | image_overflow,
    cutoff=cutoff,
    images=images,
  )


def neighbor_list(
  cutoff: float = DEFAULT_CUTOFF,
  *,
  margin: float = 1.0,
  images: int | None = None,
) -> tuple[Callable[[Crystals], Neighbors], Callable[[Crystals, Neighbors], Neighbors]]:
  """jax-md-style ``(allocate_fn, update_fn)`` pair.

  Args:
    cutoff: Å.
    margin: capacity = ``ceil(margin * required_capacity)`` at allocation.
    images: fixed image half-width; None sizes it from the batch at allocation.

  Returns:
    ``allocate_fn(crystals) -> Neighbors`` (host-side, not jittable: sizes the
    static shapes) and ``update_fn(crystals, neighbors) -> Neighbors``
    (jittable, same shapes; check ``overflow`` and reallocate when set).
  """

  def allocate_fn(crystals: Crystals) -> Neighbors:
    capacity = int(np.ceil(margin * required_capacity(crystals, cutoff)))
    n_images = images if images is not None else required_images(crystals, cutoff)
    return compute_neighbors(crystals, cutoff=cutoff, capacity=capacity, images=n_images)

  def update_fn(crystals: Crystals, neighbors: Neighbors) -> Neighbors:
    return compute_neighbors(
      crystals, cutoff=neighbors.cutoff, capacity=neighbors.capacity, images=neighbors.images
    )

  return allocate_fn, update_fn


# ----------------------------------------------------------------------------
# Graphs.


def edge_features(vectors: jax.Array) -> jax.Array:
  """``(r, |r|, |r|^2)`` features ``[..., 5]`` of edge vectors ``[..., 3]`` (Å).

  The norm is safe at zero (zero value, zero gradient) so padding edges give
  no NaNs under autodiff.
  """
  sq = jnp.sum(vectors * vectors, axis=-1, keepdims=True)
  return jnp.concatenate([vectors, safe_norm(vectors), sq], axis=-1)


def safe_norm(vectors: jax.Array) -> jax.Array:
  """``|r|`` ``[..., 1]`` with zero value and zero gradient at ``r = 0`` (padding edges)."""
  sq = jnp.sum(vectors * vectors, axis=-1, keepdims=True)
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def unit_vectors(vectors: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(|r| [..., 1], r / |r| [..., 3])`` of edge vectors (Å): both zero, with finite
  gradients, on zero vectors (padding edges)."""
  d = safe_norm(vectors)
  return d, vectors / jnp.where(d > 0, d, 1.0)


def plane_vectors(crystals: Crystals) -> jax.Array:
  """Vectors ``[B, N, 3(plane), 3]`` (Å) from the (100), (010), (001) planes to each atom.

  Plane ``k`` passes through the origin and is spanned by the two lattice
  vectors other than ``a_k``; the vector is ``f_k h_k n_k`` with ``f_k`` the
  wrapped fractional coordinate, ``h_k`` the cell height and ``n_k`` the unit
  normal (pointing to the side of ``a_k``).
  """
  lattice = jnp.asarray(crystals.lattice)
  positions = jnp.asarray(crystals.positions)
  wrapped = positions - jax.lax.stop_gradient(jnp.floor(positions))
  recip = reciprocal_rows(lattice)  # rows b_k, a_i . b_k = delta_ik
  norm = jnp.linalg.norm(recip, axis=-1, keepdims=True)  # |b_k| = 1 / h_k
  normals = recip / norm  # [B, 3, 3]
  heights = 1.0 / norm[..., 0]  # [B, 3]
  dist = wrapped * heights[:, None, :]  # [B, N, 3]
  return dist[..., None] * normals[:, None, :, :]


def corner_vectors(crystals: Crystals) -> jax.Array:
  """Vectors ``[B, N, 3(corner), 3]`` (Å) from the corners at ``a_k`` to each (wrapped) atom."""
  lattice = jnp.asarray(crystals.lattice)
  positions = jnp.asarray(crystals.positions)
  wrapped = positions - jax.lax.stop_gradient(jnp.floor(positions))
  cart = jnp.einsum("bni,bij->bnj", wrapped, lattice)
  return cart[:, :, None, :] - lattice[:, None, :, :]


def edge_vectors(crystals: Crystals, neighbors: Neighbors) -> jax.Array:
  """Edge vectors ``r_ij = r_i - r_j`` ``[B, E, 3]`` (Å), differentiable in positions and lattice.

  Zero on padding edges.
  """
  positions = jnp.asarray(crystals.positions)
  lattice = jnp.asarray(crystals.lattice)
  take = jax.vmap(lambda p, idx: p[idx])
  frac = take(positions, neighbors.receivers) - take(positions, neighbors.senders)
  frac = frac + neighbors.shifts.astype(frac.dtype)
  vec = jnp.einsum("bei,bij->bej", frac, lattice)
  return jnp.where(neighbors.mask[..., None], vec, 0.0)


def num_fictitious(fictitious: str | None) -> int:
  """Fictitious nodes per structure: 3 for ``'plane'``/``'corner'``, 0 for None."""
  if fictitious not in FICTITIOUS_KINDS:
    raise ValueError(f"fictitious must be one of {FICTITIOUS_KINDS}, got {fictitious!r}")
  return 0 if fictitious is None else 3


def build_graph(
  crystals: Crystals,
  neighbors: Neighbors,
  *,
  fictitious: str | None = "plane",
) -> jraph.GraphsTuple:
  """One ``GraphsTuple`` for a batch, static shapes, jittable.

  Layout per structure ``b`` (``N`` slots, ``E`` capacity, ``P`` fictitious
  nodes): nodes ``b*(N+P) .. b*(N+P)+N-1`` are atom slots, the next ``P`` are
  fictitious; edges ``b*(E+P*N) ..`` are the ``E`` atom–atom edges then ``P*N``
  atom -> fictitious edges (node-major: atom ``a`` to fictitious ``k`` is
  ``E + a*P + k``).

  Returns:
    ``GraphsTuple`` with
      ``nodes``: dict of ``atomic_numbers [V]`` int32 (0 for padding and
      fictitious), ``kind [V]`` int32 (0 atom, ``1..P`` fictitious node
      ``k+1``), ``mask [V]`` bool (real atoms and fictitious nodes of real
      structures), ``real [V]`` bool (real atoms only), ``plane_distances
      [V, 3]`` Å (distance of each atom to the three planes; 0 otherwise);
      ``edges``: dict of ``vectors [Ed, 3]`` Å, ``features [Ed, 5]``, ``mask``
      bool (real and fictitious edges that exist), ``real`` bool (atom–atom
      edges only);
      ``senders``/``receivers [Ed]`` int32 global node indices (padding edges
      point at node 0 of their structure);
      ``globals``: dict ``mask [B]`` bool (structure has atoms), ``volume [B]`` Å^3;
      ``n_node [B]`` = N+P, ``n_edge [B]`` = E+P*N.
  """
  p = num_fictitious(fictitious)
  b, n = crystals.atomic_numbers.shape
  e = neighbors.capacity
  atom_mask = jnp.asarray(crystals.mask)
  has_atoms = jnp.asarray(crystals.n_atoms) > 0
  v_per = n + p
  e_per = e + p * n
  offsets = jnp.arange(b, dtype=jnp.int32) * v_per

  # Nodes.
  numbers = jnp.concatenate(
    [jnp.asarray(crystals.atomic_numbers, jnp.int32), jnp.zeros((b, p), jnp.int32)], axis=1
  )
  kind = jnp.concatenate(
    [jnp.zeros((b, n), jnp.int32), jnp.broadcast_to(jnp.arange(1, p + 1, dtype=jnp.int32), (b, p))],
    axis=1,
  )
  real = jnp.concatenate([atom_mask, jnp.zeros((b, p), bool)], axis=1)
  node_mask = jnp.concatenate([atom_mask, jnp.broadcast_to(has_atoms[:, None], (b, p))], axis=1)
  plane_dist = _plane_distances(crystals)
  plane_dist = jnp.where(atom_mask[..., None], plane_dist, 0.0)
  plane_dist = jnp.concatenate([plane_dist, jnp.zeros((b, p, 3), plane_dist.dtype)], axis=1)

  # Atom–atom edges.
  vec = edge_vectors(crystals, neighbors)  # [B, E, 3]
  recv = neighbors.receivers
  send = neighbors.senders
  emask = neighbors.mask
  # Fictitious edges: atom a -> fictitious node k.
  if p:
    fict = (
      plane_vectors(crystals) if fictitious == "plane" else corner_vectors(crystals)
    )  # [B, N, P, 3]
    fict = jnp.where(atom_mask[:, :, None, None], fict, 0.0)
    atoms = jnp.arange(n, dtype=jnp.int32)
    f_send = jnp.broadcast_to(jnp.repeat(atoms, p), (b, n * p))
    f_recv = jnp.broadcast_to(jnp.tile(n + jnp.arange(p, dtype=jnp.int32), n), (b, n * p))
    f_mask = jnp.repeat(atom_mask, p, axis=1)
    vec = jnp.concatenate([vec, fict.reshape(b, n * p, 3)], axis=1)
    recv = jnp.concatenate([recv, f_recv], axis=1)
    send = jnp.concatenate([send, f_send], axis=1)
    real_edge = jnp.concatenate([emask, jnp.zeros((b, n * p), bool)], axis=1)
    emask = jnp.concatenate([emask, f_mask], axis=1)
  else:
    real_edge = emask
  vec = jnp.where(emask[..., None], vec, 0.0)
  recv = recv + offsets[:, None]
  send = send + offsets[:, None]

  return jraph.GraphsTuple(
    nodes={
      "atomic_numbers": numbers.reshape(-1),
      "kind": kind.reshape(-1),
      "mask": node_mask.reshape(-1),
      "real": real.reshape(-1),
      "plane_distances": plane_dist.reshape(-1, 3),
    },
    edges={
      "vectors": vec.reshape(-1, 3),
      "features": edge_features(vec).reshape(-1, 5),
      "mask": emask.reshape(-1),
      "real": real_edge.reshape(-1),
    },
    senders=send.reshape(-1),
    receivers=recv.reshape(-1),
    globals={"mask": has_atoms, "volume": jnp.abs(jnp.linalg.det(jnp.asarray(crystals.lattice)))},
    n_node=jnp.full((b,), v_per, jnp.int32),
    n_edge=jnp.full((b,), e_per, jnp.int32),
  )


def _plane_distances(crystals: Crystals) -> jax.Array:
  """Distances ``[B, N, 3]`` (Å) of each (wrapped) atom to the three lattice planes."""
  lattice = jnp.asarray(crystals.lattice)
  positions = jnp.asarray(crystals.positions)
  wrapped = positions - jax.lax.stop_gradient(jnp.floor(positions))
  heights = 1.0 / jnp.linalg.norm(reciprocal_rows(lattice), axis=-1)  # [B, 3]
  return wrapped * heights[:, None, :]


def graph_from_crystals(
  crystals: Crystals,
  *,
  cutoff: float = DEFAULT_CUTOFF,
  capacity: int,
  images: int = DEFAULT_IMAGES,
  fictitious: str | None = "plane",
) -> tuple[jraph.GraphsTuple, jax.Array]:
  """Neighbour search and graph in one call (jittable; keyword options static).

  Returns:
    ``(graph, overflow [B] bool)``.
  """
  neighbors = compute_neighbors(crystals, cutoff=cutoff, capacity=capacity, images=images)
  return build_graph(crystals, neighbors, fictitious=fictitious), neighbors.overflow
