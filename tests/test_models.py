"""Force/stress and energy networks: symmetries, isolation of plane atoms, batching, io, FD."""

import dataclasses
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from crystal_search import crystals as cr
from crystal_search import graphs
from crystal_search.errors import InputError
from crystal_search.models import config as config_lib
from crystal_search.models import force_stress, megnet
from crystal_search.models import io as model_io

CAPACITY = 400


def small_config(**overrides):
  c = config_lib.get_model_config()
  c.num_blocks = 2
  c.width = 16
  c.head_widths = (16, 8)
  c.set2set_steps = 2
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def random_structure(seed, n):
  rng = np.random.default_rng(seed)
  lattice = Lattice.from_parameters(*rng.uniform(4.5, 6.5, 3), *rng.uniform(75.0, 105.0, 3))
  return Structure(lattice, list(rng.choice(["Li", "Si"], n)), rng.random((n, 3)))


def batch_of(structures, max_atoms=8, batch_size=3):
  """One batch shape for most tests, so the jitted model compiles few times."""
  batch = cr.from_structures(structures, max_atoms=max_atoms, batch_size=batch_size)
  return jax.tree_util.tree_map(jnp.asarray, batch)


_apply = jax.jit(force_stress.apply, static_argnums=0, static_argnames="capacity")


def predict(config, variables, batch, capacity=CAPACITY):
  pred = _apply(config_lib.frozen(config), variables, batch, capacity=capacity)
  assert not np.any(pred.overflow)
  return pred


@pytest.fixture(scope="module")
def setup():
  structures = [random_structure(0, 5), random_structure(1, 3)]
  batch = batch_of(structures)
  config = small_config()
  variables = force_stress.init(config, jax.random.PRNGKey(0), batch)
  variables = force_stress.set_normalization(
    variables, force_mean=0.1, force_std=0.5, stress_mean=2.0, stress_std=10.0
  )
  return structures, batch, config, variables


def test_config_validation():
  config_lib.validate_config(config_lib.get_model_config())
  bad = config_lib.get_model_config()
  bad.stress_head = "edge"
  with pytest.raises(InputError, match="stress_head"):
    config_lib.validate_config(bad)
  bad = config_lib.get_model_config()
  bad.unknown_width = 3
  with pytest.raises(InputError, match="unknown key"):
    config_lib.validate_config(bad)
  bad = config_lib.get_model_config()
  bad.elements = ("Li", "Xx")
  with pytest.raises(InputError, match="elements"):
    config_lib.validate_config(bad)
  roundtrip = config_lib.from_dict(config_lib.get_model_config().to_dict())
  assert roundtrip.head_widths == (64, 32)


def test_check_elements():
  config = small_config()
  megnet.check_elements(config, [random_structure(0, 4)])
  fe = Structure(Lattice.cubic(3.0), ["Fe", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  with pytest.raises(InputError, match="Fe"):
    megnet.check_elements(config, [fe])
  with pytest.raises(InputError, match="O"):
    megnet.check_elements(config, np.array([[3, 8, 0]]))


def test_outputs_and_normalisation(setup):
  _, batch, config, variables = setup
  pred = predict(config, variables, batch)
  assert pred.forces.shape == (3, 8, 3) and pred.stress.shape == (3, 3, 3)
  np.testing.assert_allclose(pred.stress, np.swapaxes(pred.stress, 1, 2), atol=1e-5)
  assert np.all(np.asarray(pred.forces)[1, 3:] == 0)  # padding atoms
  mask = np.asarray(batch.mask)[..., None]
  np.testing.assert_allclose(
    np.asarray(pred.forces), np.where(mask, np.asarray(pred.forces_normalized) * 0.5 + 0.1, 0), 1e-5
  )
  real = np.asarray(pred.stress)[:2]  # the third structure is padding: zero stress
  np.testing.assert_allclose(real, np.asarray(pred.stress_normalized)[:2] * 10 + 2, rtol=1e-5)
  assert np.all(np.asarray(pred.stress)[2] == 0)
  fn, sn = force_stress.normalize_targets(variables, pred.forces, pred.stress)
  np.testing.assert_allclose(np.where(mask, fn, 0), pred.forces_normalized, atol=1e-5)
  np.testing.assert_allclose(sn[:2], pred.stress_normalized[:2], atol=1e-5)


@pytest.mark.parametrize(
  "head",
  [
    "plane",
    pytest.param("corner", marks=pytest.mark.slow),
    pytest.param("global", marks=pytest.mark.slow),
  ],
)
def test_permutation_and_periodic_images(head, setup):
  config = small_config(stress_head=head)
  s = random_structure(2, 6)
  batch = batch_of([s])
  if head == "plane":
    variables = setup[3]
  else:
    variables = force_stress.init(config, jax.random.PRNGKey(1), batch)
  ref = predict(config, variables, batch)
  perm = np.random.default_rng(0).permutation(6)
  permuted = Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm])
  pred = predict(config, variables, batch_of([permuted]))
  np.testing.assert_allclose(pred.forces[0, :6], ref.forces[0, perm], atol=1e-4)
  np.testing.assert_allclose(pred.stress, ref.stress, atol=1e-3)
  # Same atoms, other periodic images (integer shifts of the fractional coordinates).
  shifts = np.random.default_rng(1).integers(-2, 3, (3, 8, 3))
  imaged = dataclasses.replace(batch, positions=batch.positions + shifts)
  pred = predict(config, variables, imaged)
  np.testing.assert_allclose(pred.forces, ref.forces, atol=1e-4)
  np.testing.assert_allclose(pred.stress, ref.stress, atol=1e-3)


@pytest.mark.parametrize("head", ["plane", pytest.param("corner", marks=pytest.mark.slow)])
def test_forces_translation_invariant(head, setup):
  config = small_config(stress_head=head)
  batch = batch_of([random_structure(3, 6)])
  if head == "plane":
    variables = setup[3]
  else:
    variables = force_stress.init(config, jax.random.PRNGKey(2), batch)
  ref = predict(config, variables, batch)
  shift_frac = jnp.asarray([0.37, -0.21, 0.55])
  moved = dataclasses.replace(batch, positions=batch.positions + shift_frac)
  pred = predict(config, variables, moved)
  np.testing.assert_allclose(pred.forces, ref.forces, atol=1e-4)
  # The stress of the plane model reads atom-plane distances: translation changes it.
  assert not np.allclose(pred.stress[0], ref.stress[0], atol=1e-3)


def test_plane_nodes_do_not_influence_atoms(setup):
  _, batch, config, variables = setup
  params = variables["params"]
  frozen = config_lib.frozen(config)
  graph, _ = jax.jit(force_stress.make_graph, static_argnums=0, static_argnames="capacity")(
    frozen, batch, capacity=CAPACITY
  )
  apply_graph = jax.jit(force_stress.apply_graph, static_argnums=0)
  forces, stress = apply_graph(frozen, params, graph)
  # Scramble every plane-edge feature and the plane node kinds.
  fict = ~np.asarray(graph.edges["real"])
  noise = np.random.default_rng(0).normal(size=graph.edges["features"].shape) * 5
  edges = dict(graph.edges)
  edges["features"] = jnp.where(
    fict[:, None], graph.edges["features"] + noise, graph.edges["features"]
  )
  nodes = dict(graph.nodes)
  nodes["kind"] = jnp.where(graph.nodes["kind"] > 0, 1, 0)
  scrambled = graph._replace(edges=edges, nodes=nodes)
  forces2, stress2 = apply_graph(frozen, params, scrambled)
  np.testing.assert_array_equal(np.asarray(forces2), np.asarray(forces))
  assert not np.allclose(stress2, stress, atol=1e-3)  # the scrambling reached the planes
  # Remove the plane nodes and edges altogether: the trunk's atom and global states agree.
  trunk = megnet.MEGNet(
    tuple(config.elements), config.embed_dim, config.num_blocks, config.width, num_fictitious=3
  )
  trunk_apply = jax.jit(trunk.apply)
  v, _, u = trunk_apply({"params": params["MEGNet_0"]}, graph)
  bare, _ = jax.jit(graphs.graph_from_crystals, static_argnames=("capacity", "fictitious"))(
    batch, capacity=CAPACITY, fictitious=None
  )
  v0, _, u0 = trunk_apply({"params": params["MEGNet_0"]}, bare)
  v = np.asarray(v).reshape(3, 11, -1)[:, :8]
  v0 = np.asarray(v0).reshape(3, 8, -1)
  real = np.asarray(batch.mask)
  np.testing.assert_allclose(v[real], v0[real], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(u, u0, rtol=1e-5, atol=1e-6)


def test_mixed_batch_matches_single_structures(setup):
  structures, _, config, variables = setup
  big = random_structure(4, 11)
  mixed = predict(config, variables, batch_of(structures + [big], max_atoms=16))
  for k, s in enumerate(structures + [big]):
    n = len(s)
    for max_atoms in sorted({cr.bucket_size(n), 16}):
      alone = predict(config, variables, batch_of([s], max_atoms=max_atoms))
      np.testing.assert_allclose(alone.forces[0, :n], mixed.forces[k, :n], atol=1e-4)
      np.testing.assert_allclose(alone.stress[0], mixed.stress[k], rtol=1e-4, atol=1e-3)


def test_no_recompilation_within_a_bucket(setup):
  _, batch, config, variables = setup
  predict(config, variables, batch)
  size = _apply._cache_size()
  for seed in range(3):
    batch = batch_of([random_structure(10 + seed, 4 + seed), random_structure(20 + seed, 7)])
    predict(config, variables, batch)
  other = force_stress.set_normalization(
    variables, force_mean=0.0, force_std=2.0, stress_mean=0.0, stress_std=1.0
  )
  predict(config_lib.from_dict(config.to_dict()), other, batch)  # equal config, new object
  assert _apply._cache_size() == size
  predict(config, variables, batch_of([random_structure(0, 5)], batch_size=2))
  assert _apply._cache_size() == size + 1  # the counter does count new shapes


def test_rotation_is_deterministic(setup):
  structures, _, config, variables = setup
  s = structures[0].copy()
  s.apply_operation(SymmOp.from_axis_angle_and_translation([0, 0, 1], 90))
  a = predict(config, variables, batch_of([s]))
  b = predict(config, variables, batch_of([s]))
  np.testing.assert_array_equal(np.asarray(a.forces), np.asarray(b.forces))
  np.testing.assert_array_equal(np.asarray(a.stress), np.asarray(b.stress))


def test_save_load_roundtrip(setup, tmp_path):
  _, batch, config, variables = setup
  path = str(tmp_path / "model")
  model_io.save_model(
    path, kind="force_stress", config=config, variables=variables, metadata={"x": 1}
  )
  model_io.save_model(
    path, kind="force_stress", config=config, variables=variables, metadata={"x": 2}
  )
  kind, config2, variables2, meta = model_io.load_model(path)
  assert kind == "force_stress" and meta == {"x": 2} and config2.to_dict() == config.to_dict()
  a = predict(config, variables, batch)
  b = predict(config2, variables2, batch)
  np.testing.assert_array_equal(np.asarray(a.forces), np.asarray(b.forces))
  np.testing.assert_array_equal(np.asarray(a.stress), np.asarray(b.stress))
  with pytest.raises(InputError, match="no such model directory"):
    model_io.load_model(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="model.json"):
    model_io.load_model(str(tmp_path / "empty"))
  with pytest.raises(InputError, match="kind"):
    model_io.save_model(str(tmp_path / "x"), kind="magic", config=config, variables=variables)


_FD_SCRIPT = textwrap.dedent(
  """
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp, numpy as np
  from pymatgen.core import Lattice, Structure
  from crystal_search import crystals as cr
  from crystal_search.models import config as config_lib, energy as energy_model
  c = config_lib.get_model_config()
  c.num_blocks, c.width, c.head_widths, c.set2set_steps = 1, 8, (8, 8), 1
  c.dtype = "float64"
  c.energy.fd_step, c.energy.fd_strain = 1e-4, 1e-5
  rng = np.random.default_rng(5)
  structures = []
  while len(structures) < 2:
    lat = Lattice.from_parameters(*rng.uniform(4.5, 6.0, 3), *rng.uniform(75.0, 105.0, 3))
    s = Structure(lat, list(rng.choice(["Li", "Si"], 4)), rng.random((4, 3)))
    d = [x.nn_distance for nb in s.get_all_neighbors(4.2) for x in nb]
    if min(abs(np.array(d) - 4.0)) > 0.02 and min(d) > 1.0:  # nothing near the cutoff
      structures.append(s)
  batch = jax.tree_util.tree_map(jnp.asarray, cr.from_structures(structures, dtype=np.float64))
  v = energy_model.init(c, jax.random.PRNGKey(0), batch)
  v = energy_model.set_normalization(v, energy_mean=-3.0, energy_std=0.3)
  fn = jax.jit(energy_model.energy_forces_stress, static_argnums=0,
               static_argnames=("capacity", "derivative"))
  fc = config_lib.frozen(c)
  e1, f1, s1, o1 = fn(fc, v, batch, capacity=300, derivative="fd")
  e2, f2, s2, o2 = fn(fc, v, batch, capacity=300, derivative="autodiff")
  assert not np.any(o1) and not np.any(o2)
  np.testing.assert_allclose(e1, e2)
  assert np.abs(f2).max() > 1e-3 and np.abs(s2).max() > 1e-2
  np.testing.assert_allclose(f1, f2, atol=1e-6 * max(1, np.abs(f2).max()))
  np.testing.assert_allclose(s1, s2, atol=1e-5 * max(1, np.abs(s2).max()))
  # Energy normalisation: E = n_atoms * (out * std + mean); translation invariance.
  v2 = energy_model.set_normalization(v, energy_mean=1.0, energy_std=2.0)
  e3 = fn(fc, v2, batch, capacity=300, derivative="autodiff")[0]
  n = np.array([4, 4])
  np.testing.assert_allclose(e3, n * ((np.asarray(e2) / n + 3.0) / 0.3 * 2.0 + 1.0), rtol=1e-9)
  moved = batch.replace(positions=batch.positions + jnp.asarray([0.31, -0.12, 0.45]))
  e4, f4, s4, _ = fn(fc, v, moved, capacity=300, derivative="autodiff")
  np.testing.assert_allclose(e4, e2, rtol=1e-9)
  np.testing.assert_allclose(f4, f2, atol=1e-8)
  print("FD_OK", np.abs(f1 - f2).max(), np.abs(s1 - s2).max())
  """
)


def test_energy_model_fd_matches_autodiff_float64():
  """FD vs autodiff forces/stress, normalisation and translation invariance (x64, subprocess)."""
  out = subprocess.run(
    [sys.executable, "-c", _FD_SCRIPT], capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "FD_OK" in out.stdout


def _edge_config():
  return small_config(force_head="edge", stress_head="virial", edge_inputs="rbf")


def _check_rotation_equivariance(config):
  """A 7-atom cell and its rotated copy: asserts F -> R F and S -> R S R^T (S symmetric).

  Returns ``(batch, variables, pred, forces [7, 3], stress [3, 3])`` of the pair."""
  from scipy.spatial.transform import Rotation

  s = random_structure(4, 7)
  rot = Rotation.random(random_state=3).as_matrix()
  rotated = Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)
  batch = batch_of([s, rotated])
  variables = force_stress.init(config, jax.random.PRNGKey(5), batch)
  pred = predict(config, variables, batch)
  f, f_rot = np.asarray(pred.forces[0, :7]), np.asarray(pred.forces[1, :7])
  scale_f = np.abs(f).max()
  assert scale_f > 1e-3
  np.testing.assert_allclose(f @ rot.T, f_rot, atol=1e-4 * scale_f)
  stress, stress_rot = np.asarray(pred.stress[0]), np.asarray(pred.stress[1])
  np.testing.assert_allclose(stress, stress.T, atol=1e-5 * np.abs(stress).max())
  np.testing.assert_allclose(rot @ stress @ rot.T, stress_rot, atol=1e-4 * np.abs(stress).max())
  return batch, variables, pred, f, stress


def test_edge_heads_are_rotation_equivariant_and_translation_invariant():
  """Bond-sum heads on rotation-invariant edges: F -> R F and S -> R S R^T, exactly."""
  from scipy.spatial.transform import Rotation

  config = _edge_config()
  batch, variables, pred, f, stress = _check_rotation_equivariance(config)
  scale_f = np.abs(f).max()
  rot = Rotation.random(random_state=3).as_matrix()
  # The paper's node head on raw vectors is not equivariant (what 90° augmentation is for).
  paper = small_config()
  paper_vars = force_stress.init(paper, jax.random.PRNGKey(5), batch)
  p = predict(paper, paper_vars, batch)
  assert not np.allclose(np.asarray(p.forces[0, :7]) @ rot.T, p.forces[1, :7], atol=1e-3)
  # Rigid translation changes nothing (no plane atoms).
  moved = dataclasses.replace(batch, positions=batch.positions + jnp.asarray([0.3, -0.2, 0.45]))
  pred2 = predict(config, variables, moved)
  np.testing.assert_allclose(pred2.forces, pred.forces, atol=1e-4 * scale_f)
  np.testing.assert_allclose(pred2.stress, pred.stress, atol=1e-4 * np.abs(stress).max())


def test_edge_heads_are_continuous_when_an_atom_crosses_the_cutoff():
  """Moving a Li atom across the 4 Å cutoff of a Si atom changes the outputs smoothly."""
  config = _edge_config()
  lattice = Lattice.cubic(12.0)

  def at(x):
    return Structure(lattice, ["Si", "Li"], [[0, 0, 0], [x / 12.0, 0, 0]])

  xs = [3.999, 4.0005]  # straddling the cutoff (Å)
  batch = batch_of([at(x) for x in xs], batch_size=2)
  variables = force_stress.init(config, jax.random.PRNGKey(0), batch)
  pred = predict(config, variables, batch)
  assert np.abs(np.asarray(pred.forces[0] - pred.forces[1])).max() < 1e-4
  assert np.abs(np.asarray(pred.stress[0] - pred.stress[1])).max() < 1e-3
  # The paper's mean aggregation over raw vectors jumps there.
  paper = small_config(stress_head="global")
  paper_vars = force_stress.init(paper, jax.random.PRNGKey(0), batch)
  p = predict(paper, paper_vars, batch)
  assert np.abs(np.asarray(p.stress[0] - p.stress[1])).max() > 1e-3


def test_new_model_keys_validated_and_old_model_json_still_loads():
  with pytest.raises(InputError, match="force_head"):
    config_lib.validate_config(small_config(force_head="atom"))
  with pytest.raises(InputError, match="edge_inputs"):
    config_lib.validate_config(small_config(edge_inputs="fourier"))
  old = config_lib.get_model_config().to_dict()
  del old["force_head"], old["edge_inputs"]
  loaded = config_lib.from_dict(old)
  assert loaded.force_head == "node" and loaded.edge_inputs == "vector"


def test_vector_channels_are_equivariant_continuous_and_used():
  """PaiNN-style vectors in the trunk: F -> R F, S -> R S R^T exactly; continuous at the
  cutoff; and the vectors do contribute (zeroing their force read-out changes the forces)."""
  config = _edge_config()
  config.vector_channels = 4
  batch, variables, pred, f, stress = _check_rotation_equivariance(config)
  assert "vector_filter" in variables["params"]["MEGNet_0"]["MEGNetBlock_1"]
  scale_f = np.abs(f).max()
  # The vectors' read-out is part of the forces.
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  params["force_vectors"] = {"kernel": jnp.zeros_like(params["force_vectors"]["kernel"])}
  without = predict(config, {**variables, "params": params}, batch)
  assert np.abs(np.asarray(without.forces[0, :7]) - f).max() > 1e-3 * scale_f
  # The scalar states read the vectors: zeroing their filters changes the stress.
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  for k in range(config.num_blocks):
    block = dict(params["MEGNet_0"][f"MEGNetBlock_{k}"])
    block["vector_filter"] = jax.tree_util.tree_map(jnp.zeros_like, block["vector_filter"])
    params["MEGNet_0"] = {**params["MEGNet_0"], f"MEGNetBlock_{k}": block}
  no_vectors = predict(config, {**variables, "params": params}, batch)
  assert np.abs(np.asarray(no_vectors.stress[0]) - stress).max() > 1e-5 * np.abs(stress).max()
  # Continuous when an atom crosses the cutoff.
  lattice = Lattice.cubic(12.0)
  pair = [
    Structure(lattice, ["Si", "Li", "Li"], [[0, 0, 0], [x / 12, 0, 0], [0, 0.2, 0]])
    for x in (3.999, 4.0005)
  ]
  crossing = batch_of(pair, batch_size=2)
  p = predict(config, force_stress.init(config, jax.random.PRNGKey(0), crossing), crossing)
  assert np.abs(np.asarray(p.forces[0] - p.forces[1])).max() < 1e-4
  assert np.abs(np.asarray(p.stress[0] - p.stress[1])).max() < 1e-3


def test_vector_channels_validated():
  with pytest.raises(InputError, match="vector_channels"):
    config_lib.validate_config(small_config(vector_channels=-1))
  with pytest.raises(InputError, match="vector_channels.*rbf"):
    config_lib.validate_config(small_config(vector_channels=4))  # the paper's vector edges
  old = config_lib.get_model_config().to_dict()
  del old["vector_channels"]
  assert config_lib.from_dict(old).vector_channels == 0
