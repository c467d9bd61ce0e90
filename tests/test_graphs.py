"""Periodic neighbour lists and plane-atom graphs against pymatgen and hand geometry."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_search import crystals as cr
from crystal_search import graphs

CUTOFF = 4.0


def _random_structure(rng, n, lattice=None):
  if lattice is None:
    lattice = Lattice.from_parameters(*rng.uniform(4.0, 7.0, 3), *rng.uniform(70.0, 110.0, 3))
  return Structure(lattice, list(rng.choice(["Li", "Si"], n)), rng.random((n, 3)))


def _test_structures():
  rng = np.random.default_rng(0)
  return [
    _random_structure(rng, 5),
    _random_structure(rng, 7),
    # A tiny cell: the atom sees many images of itself.
    Structure(Lattice.cubic(2.0), ["Li"], [[0.3, 0.2, 0.1]]),
    # Strongly skewed cells (angles near 30 and 150 degrees).
    _random_structure(rng, 6, Lattice.from_parameters(4.5, 5.0, 4.0, 35, 35, 30)),
    _random_structure(rng, 4, Lattice.from_parameters(5.0, 4.5, 5.5, 150, 100, 80)),
    # Non-wrapped fractional coordinates (negative and > 1).
    Structure(Lattice.cubic(3.1), ["Si", "Li"], [[-0.2, 1.3, 0.5], [2.25, 0.1, -1.7]]),
    # A cell thicker than twice the cutoff: the minimum image alone serves it.
    _random_structure(rng, 6, Lattice.from_parameters(8.5, 9.0, 9.5, 85, 95, 90)),
  ]


def _neighbors(structures, capacity=None, images=None):
  batch = cr.from_structures(structures)
  capacity = capacity or graphs.required_capacity(batch, CUTOFF)
  images = images or graphs.required_images(batch, CUTOFF)
  fn = jax.jit(graphs.compute_neighbors, static_argnames=("cutoff", "capacity", "images"))
  nb = fn(batch, cutoff=CUTOFF, capacity=capacity, images=images)
  return batch, nb


def test_neighbours_match_pymatgen():
  structures = _test_structures()
  batch, nb = _neighbors(structures)
  assert not np.any(nb.overflow)
  vec = np.asarray(graphs.edge_vectors(batch, nb))
  recv = np.asarray(nb.receivers)
  mask = np.asarray(nb.mask)
  for b, s in enumerate(structures):
    ref_all = s.get_all_neighbors(CUTOFF)
    assert int(nb.count[b]) == sum(len(x) for x in ref_all)
    for a in range(len(s)):
      ref = np.sort([x.nn_distance for x in ref_all[a]])
      sel = mask[b] & (recv[b] == a)
      got = np.sort(np.linalg.norm(vec[b][sel], axis=-1))
      assert len(got) == len(ref), (b, a)
      np.testing.assert_allclose(got, ref, atol=1e-4)


def test_edge_vectors_are_r_i_minus_r_j():
  s = Structure(Lattice.cubic(3.5), ["Li", "Si"], [[0.1, 0.1, 0.1], [0.5, 0.4, 0.3]])
  batch, nb = _neighbors([s])
  vec = np.asarray(graphs.edge_vectors(batch, nb))[0]
  recv, send, mask = (np.asarray(x)[0] for x in (nb.receivers, nb.senders, nb.mask))
  ref_all = s.get_all_neighbors(CUTOFF)
  for a in range(2):
    for other in (0, 1):
      ref = np.array(
        [s[a].coords - x.coords for x in ref_all[a] if x.index == other], np.float64
      ).reshape(-1, 3)
      got = vec[mask & (recv == a) & (send == other)]
      key = lambda v: np.lexsort(np.round(v, 3).T)
      np.testing.assert_allclose(got[key(got)], ref[key(ref)], atol=1e-4)


def test_required_capacity_and_images():
  structures = _test_structures()
  batch = cr.from_structures(structures)
  counts = [sum(len(x) for x in s.get_all_neighbors(CUTOFF)) for s in structures]
  assert graphs.required_capacity(batch, CUTOFF) == max(counts)
  np.testing.assert_array_equal(graphs.edge_counts(batch, CUTOFF), counts)
  # The 2 Å cubic cell needs images up to +-2 (floor(4 / 2 + 0.5) = 2).
  assert graphs.required_images(batch, CUTOFF) >= 2
  thick = cr.from_structures([Structure(Lattice.cubic(9.0), ["Li"], [[0, 0, 0]])])
  assert graphs.required_images(thick, CUTOFF) == 1


def test_overflow_detected():
  structures = _test_structures()
  batch = cr.from_structures(structures)
  counts = graphs.edge_counts(batch, CUTOFF)
  capacity = int(np.sort(counts)[-2])  # too small for the structure with the most edges
  _, nb = _neighbors(structures, capacity=capacity)
  np.testing.assert_array_equal(np.asarray(nb.overflow), counts > capacity)
  assert np.any(nb.overflow)
  np.testing.assert_array_equal(np.asarray(nb.count), counts)
  # Image range too small for the 2 Å cell (needs 2), enough for the others.
  _, nb = _neighbors(structures, capacity=int(counts.max()), images=1)
  assert bool(nb.overflow[2])
  heights = graphs.cell_heights(np.asarray(batch.lattice))
  expected = np.floor(CUTOFF / heights.min(axis=1) + 0.5) > 1
  np.testing.assert_array_equal(np.asarray(nb.overflow), expected)


def test_allocate_update_and_integer_shifts():
  rng = np.random.default_rng(1)
  structures = [_random_structure(rng, 6), _random_structure(rng, 3)]
  batch = jax.tree_util.tree_map(jnp.asarray, cr.from_structures(structures))
  allocate, update = graphs.neighbor_list(CUTOFF, margin=1.2)
  nb = allocate(batch)
  shifted = dataclasses.replace(
    batch, positions=batch.positions + jnp.asarray(rng.integers(-3, 4, batch.positions.shape))
  )
  nb2 = jax.jit(update)(shifted, nb)
  assert nb2.capacity == nb.capacity and not np.any(nb2.overflow)
  d1 = np.asarray(jnp.linalg.norm(graphs.edge_vectors(batch, nb), axis=-1))
  d2 = np.asarray(jnp.linalg.norm(graphs.edge_vectors(shifted, nb2), axis=-1))
  for b in range(2):
    np.testing.assert_allclose(np.sort(d1[b]), np.sort(d2[b]), atol=1e-4)


def test_plane_vectors_and_graph_layout():
  rng = np.random.default_rng(2)
  s = _random_structure(rng, 5, Lattice.from_parameters(5.0, 6.0, 4.5, 60, 110, 80))
  batch = cr.from_structures([s, _random_structure(rng, 2)], max_atoms=8)
  planes = np.asarray(graphs.plane_vectors(batch))[0, :5]  # [atoms, 3 planes, 3]
  m = s.lattice.matrix
  for k in range(3):
    u, v = m[(k + 1) % 3], m[(k + 2) % 3]
    normal = np.cross(u, v)
    normal /= np.linalg.norm(normal)
    if np.dot(normal, m[k]) < 0:
      normal = -normal
    for a in range(5):
      cart = (s.frac_coords[a] % 1.0) @ m
      expected = np.dot(cart, normal) * normal  # from the plane (through 0) to the atom
      np.testing.assert_allclose(planes[a, k], expected, atol=1e-4)
  _, nb = _neighbors([s, _random_structure(rng, 2)])
  graph = graphs.build_graph(batch, nb, fictitious="plane")
  n, p, e = 8, 3, nb.capacity
  assert graph.nodes["kind"].shape == (2 * (n + p),)
  assert graph.senders.shape == (2 * (e + p * n),)
  recv = np.asarray(graph.receivers).reshape(2, -1)
  send = np.asarray(graph.senders).reshape(2, -1)
  emask = np.asarray(graph.edges["mask"]).reshape(2, -1)
  real = np.asarray(graph.edges["real"]).reshape(2, -1)
  kind = np.asarray(graph.nodes["kind"])
  for b in range(2):
    fict = emask[b] & ~real[b]
    # Fictitious edges: sender is an atom, receiver is a plane node; never the reverse.
    assert np.all(kind[recv[b][fict]] > 0) and np.all(kind[send[b][fict]] == 0)
    assert np.all(kind[recv[b][real[b]]] == 0) and np.all(kind[send[b][emask[b]]] == 0)
    assert fict.sum() == 3 * int(batch.n_atoms[b])
  # Plane edge features equal the plane vectors.
  feats = np.asarray(graph.edges["features"]).reshape(2, -1, 5)[0, e : e + 15].reshape(5, 3, 5)
  np.testing.assert_allclose(feats[..., :3], planes, atol=1e-5)
  np.testing.assert_allclose(feats[..., 3], np.linalg.norm(planes, axis=-1), atol=1e-5)
  np.testing.assert_allclose(feats[..., 4], np.sum(planes**2, axis=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fictitious", ["corner", None])
def test_other_fictitious_kinds(fictitious):
  rng = np.random.default_rng(3)
  s = _random_structure(rng, 4)
  batch, nb = _neighbors([s])
  graph = graphs.build_graph(batch, nb, fictitious=fictitious)
  p = graphs.num_fictitious(fictitious)
  assert graph.nodes["kind"].shape == (8 + p,)
  if fictitious == "corner":
    vec = np.asarray(graphs.corner_vectors(batch))[0]
    m = s.lattice.matrix
    np.testing.assert_allclose(vec[1, 2], (s.frac_coords[1] % 1.0) @ m - m[2], atol=1e-4)


def test_unit_vectors_and_their_gradient_are_finite_on_padding_edges():
  vectors = jnp.array([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]])  # a real edge and a padding edge
  d, unit = graphs.unit_vectors(vectors)
  np.testing.assert_allclose(np.asarray(d[:, 0]), [5.0, 0.0])
  np.testing.assert_allclose(np.asarray(unit), [[0.6, 0.0, 0.8], [0.0, 0.0, 0.0]])
  grad = jax.grad(lambda v: jnp.sum(graphs.unit_vectors(v)[1] * jnp.array([1.0, 2.0, 3.0])))(
    vectors
  )
  assert np.all(np.isfinite(np.asarray(grad)))
  # d(r/|r|)/dr is (I - u u^T) / |r|: orthogonal to u on the real edge.
  assert abs(float(jnp.dot(grad[0], unit[0]))) < 1e-6
