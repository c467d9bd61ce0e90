"""Committees of force fields: seed ensembles and rotation averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from test_model_force_field import small_config, structures

from crystal_search import augment, relax
from crystal_search import crystals as cr
from crystal_search.errors import InputError
from crystal_search.force_fields import analytic, ensemble
from crystal_search.force_fields import model as model_ff
from crystal_search.force_fields.base import ForceField
from crystal_search.models import force_stress


def _batch():
  return jax.tree_util.tree_map(jnp.asarray, cr.from_structures(structures()))


@pytest.fixture(scope="module")
def untrained():
  """A random-weight force/stress network: far from rotation-equivariant."""
  batch = _batch()
  variables = force_stress.init(small_config(), jax.random.PRNGKey(3), batch)
  variables = force_stress.set_normalization(
    variables, force_mean=0.0, force_std=0.3, stress_mean=1.0, stress_std=12.0
  )
  return model_ff.ModelForceField(small_config(), variables, capacity=400)


def test_cube_rotations_are_the_24_proper_ones_identity_first():
  rot = ensemble.ROTATION_SETS["cube"]
  assert rot.shape == (24, 3, 3) and np.allclose(rot[0], np.eye(3))
  assert np.allclose(np.linalg.det(rot), 1.0)
  assert len({tuple(r.astype(int).ravel()) for r in rot}) == 24
  quarter = ensemble.ROTATION_SETS["quarter"]
  assert quarter.shape == (7, 3, 3) and np.allclose(quarter[1:], augment.ROTATIONS_90)


def test_ensemble_of_lennard_jones_is_lennard_jones_of_the_mean_epsilon():
  batch = _batch()
  a = analytic.lennard_jones(sigma=2.0, epsilon=0.1, images=3)
  b = analytic.lennard_jones(sigma=2.0, epsilon=0.3, images=3)
  mean = analytic.lennard_jones(sigma=2.0, epsilon=0.2, images=3)
  ens = ensemble.committee([a, b])
  assert isinstance(ens, ForceField) and ens.jittable
  got, want = ens(batch), mean(batch)
  np.testing.assert_allclose(got.forces, want.forces, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.stress, want.stress, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.energy, want.energy, rtol=1e-5, atol=1e-6)
  # A rotation-invariant potential is unchanged by rotation averaging.
  avg = ensemble.RotationAveragedForceField(mean, "cube")(batch)
  np.testing.assert_allclose(avg.forces, want.forces, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(avg.stress, want.stress, rtol=1e-4, atol=1e-4)


def test_rotation_average_over_the_cube_group_is_equivariant(untrained):
  """f_avg(Q x) = Q f_avg(x) for Q in the group, though the network itself is not."""
  batch = _batch()
  q = ensemble.ROTATION_SETS["cube"][5]
  rotated = augment.rotate(
    jax.tree_util.tree_map(np.asarray, batch),
    np.zeros(batch.positions.shape, np.float32),
    np.zeros((batch.batch_size, 3, 3), np.float32),
    np.stack([q] * batch.batch_size),
  )[0]
  rotated = jax.tree_util.tree_map(jnp.asarray, rotated)

  def expected(out):
    forces = np.einsum("bnj,kj->bnk", np.asarray(out.forces), q)  # F Qᵀ
    stress = np.einsum("ij,bjk,lk->bil", q, np.asarray(out.stress), q)  # Q σ Qᵀ
    return forces, stress

  plain_f, plain_s = expected(untrained(batch))
  raw = untrained(rotated)
  assert np.abs(np.asarray(raw.forces) - plain_f).max() > 1e-3  # the network is not equivariant
  avg = ensemble.RotationAveragedForceField(untrained, "cube")
  f, s = expected(avg(batch))
  out = avg(rotated)
  mask = np.asarray(batch.mask)[..., None]
  np.testing.assert_allclose(np.asarray(out.forces) * mask, f * mask, atol=2e-4)
  np.testing.assert_allclose(np.asarray(out.stress), s, atol=5e-3)


def test_committees_relax_and_grow(untrained):
  """A committee runs inside the jitted relaxer like any force field; grow reaches the members."""
  lj = analytic.lennard_jones(sigma=2.0, epsilon=0.1, images=3)
  ens = ensemble.committee([lj, lj], rotations="quarter")
  assert isinstance(ens, ensemble.EnsembleForceField) and len(ens.members) == 2
  s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.2), ["Ar"], [[0, 0, 0]])
  s = Structure(
    s.lattice, s.species, s.frac_coords + np.random.default_rng(1).normal(0, 0.02, (4, 3))
  )
  (alone,) = relax.relax_structures([s], lj, fmax=1e-3, smax=0.05, max_steps=200)
  (mean,) = relax.relax_structures([s], ens, fmax=1e-3, smax=0.05, max_steps=200)
  assert alone.converged and mean.converged and alone.steps == mean.steps
  np.testing.assert_allclose(mean.final.lattice.abc, alone.final.lattice.abc, rtol=1e-4)
  grown = ensemble.committee([untrained, untrained]).grow()
  assert all(m.capacity == 2 * untrained.capacity for m in grown.members)
  assert ensemble.RotationAveragedForceField(untrained).grow().inner.capacity == 800


def test_bad_committees_are_one_line_errors(untrained):
  with pytest.raises(InputError, match="at least one"):
    ensemble.EnsembleForceField(())
  with pytest.raises(InputError, match="unknown"):
    ensemble.RotationAveragedForceField(untrained, "octahedral")
  with pytest.raises(InputError, match="proper rotation"):
    ensemble.RotationAveragedForceField(untrained, -np.eye(3)[None])


def test_equivariant_heads_use_the_rotation_average_of_the_stored_offsets():
  """A virial/edge network on rbf edges is equivariant but for the trainer's constant offsets
  (one mean broadcast to all nine stress components); the output layer uses their rotation
  average, so the model equals its own average over the cube's 24 rotations, at 1x the cost."""
  from crystal_search.models import force_stress as fs

  batch = _batch()
  config = small_config()
  config.force_head, config.stress_head, config.edge_inputs = "edge", "virial", "rbf"
  assert fs.equivariant_outputs(config) == (True, True)
  assert fs.equivariant_outputs(small_config()) == (False, False)
  variables = fs.init(config, jax.random.PRNGKey(1), batch)
  variables = fs.set_normalization(
    variables, force_mean=0.02, force_std=0.3, stress_mean=-4.0, stress_std=12.0
  )
  ff = model_ff.ModelForceField(config, variables, capacity=400)
  out = ff(batch)
  avg = ensemble.RotationAveragedForceField(ff, "cube")(batch)
  np.testing.assert_allclose(out.stress, avg.stress, atol=2e-4)
  np.testing.assert_allclose(out.forces, avg.forces, atol=2e-5)
  # Pressure keeps the stored mean: tr(-4 J) / 3 = -4 on the diagonal, 0 off it.
  norm = fs.output_normalization(config, variables["normalization"])
  np.testing.assert_allclose(norm["stress_mean"], -4.0 * np.eye(3))
  np.testing.assert_allclose(norm["force_mean"], 0.0)
  # A paper (plane/node) head is not equivariant: its stored constants are used as they are.
  plain = small_config()
  kept = fs.output_normalization(plain, variables["normalization"])
  np.testing.assert_allclose(kept["stress_mean"], np.full((3, 3), -4.0))
