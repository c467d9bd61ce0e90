"""ModelForceField / EnergyModelForceField: protocol, overflow and grow, jit reuse, directories."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_search import crystals as cr
from crystal_search import graphs
from crystal_search.errors import InputError
from crystal_search.force_fields import model as model_ff
from crystal_search.force_fields.base import ForceField
from crystal_search.models import config as config_lib
from crystal_search.models import energy as energy_model
from crystal_search.models import force_stress
from crystal_search.models import io as model_io


def small_config():
  c = config_lib.get_model_config()
  c.num_blocks, c.width, c.head_widths, c.set2set_steps = 2, 16, (16, 8), 2
  return c


def structures():
  rng = np.random.default_rng(7)
  out = []
  for n in (5, 3):
    lattice = Lattice.from_parameters(*rng.uniform(4.5, 6.0, 3), *rng.uniform(80.0, 100.0, 3))
    out.append(Structure(lattice, list(rng.choice(["Li", "Si"], n)), rng.random((n, 3))))
  return out


@pytest.fixture(scope="module")
def model():
  batch = jax.tree_util.tree_map(jnp.asarray, cr.from_structures(structures()))
  config = small_config()
  variables = force_stress.init(config, jax.random.PRNGKey(0), batch)
  variables = force_stress.set_normalization(
    variables, force_mean=0.0, force_std=0.3, stress_mean=1.0, stress_std=12.0
  )
  return batch, config, variables


def test_protocol_outputs_and_grow(model):
  batch, config, variables = model
  need = graphs.required_capacity(batch, config.cutoff)
  ff = model_ff.ModelForceField(config, variables, capacity=need + 5)
  assert isinstance(ff, ForceField) and ff.jittable and ff.elements == ("Li", "Si")
  out = ff(batch)
  assert not np.any(out.overflow) and np.all(np.isnan(out.energy))
  ref = jax.jit(lambda v, c: force_stress.apply(config, v, c, capacity=need + 5))(
    variables, batch
  )  # also: the force field is callable inside the caller's own jit
  np.testing.assert_allclose(out.forces, ref.forces, atol=1e-5)
  np.testing.assert_allclose(out.stress, ref.stress, atol=1e-4)
  # Too small a capacity: flagged; grow() makes it fit and gives the same answer.
  small = model_ff.ModelForceField(config, variables, capacity=need // 2 + 1)
  assert np.any(small(batch).overflow)
  before = hash(small.config)
  grown = small.grow()
  assert grown.capacity == 2 * small.capacity and grown.config.max_images == config.max_images + 1
  # The original's config is untouched (its hash keys the compiled programs) and growing again
  # gives the same object (no new compilation).
  assert hash(small.config) == before and small.config.max_images == config.max_images
  assert small.grow() is grown
  assert not np.any(grown(batch).overflow)
  np.testing.assert_allclose(grown(batch).forces, out.forces, atol=1e-5)


def test_sized_for_fits_the_batch_on_a_coarse_grid_and_gives_the_same_answer(model):
  batch, config, variables = model
  need = graphs.required_capacity(batch, config.cutoff)
  ff = model_ff.ModelForceField(config, variables, capacity=4 * need)
  sized = ff.sized_for(batch)
  assert (
    need
    < sized.capacity
    <= max(model_ff.CAPACITY_QUANTUM, 1.2 * model_ff.CAPACITY_MARGIN * need + 8)
  )
  assert sized is ff.sized_for(batch)  # the same object: its compiled programs are reused
  assert sized.capacity == model_ff.capacity_for(batch, config.cutoff)
  out, ref = sized(batch), ff(batch)
  assert not np.any(out.overflow)
  np.testing.assert_allclose(out.forces, ref.forces, atol=1e-5)
  np.testing.assert_allclose(out.stress, ref.stress, atol=1e-4)
  # The grid: capacities of similar batches coincide.
  grid = {model_ff.capacity_for(batch, config.cutoff * (1 + 1e-4 * k)) for k in range(5)}
  assert len(grid) == 1


def test_new_instance_same_shapes_does_not_recompile(model):
  batch, config, variables = model
  ff = model_ff.ModelForceField(config, variables, capacity=300)
  ff(batch)
  size = model_ff._force_stress_call._cache_size()
  other = force_stress.set_normalization(
    variables, force_mean=1.0, force_std=1.0, stress_mean=0.0, stress_std=1.0
  )
  out = model_ff.ModelForceField(small_config(), other, capacity=300)(batch)
  assert model_ff._force_stress_call._cache_size() == size
  # New variables are used, not baked-in constants.
  assert not np.allclose(out.forces, ff(batch).forces)


def test_from_directory_and_energies(model, tmp_path):
  batch, config, variables = model
  path = str(tmp_path / "fs")
  model_io.save_model(path, kind="force_stress", config=config, variables=variables)
  ff = model_ff.from_directory(path, capacity=300)
  assert isinstance(ff, model_ff.ModelForceField)
  np.testing.assert_array_equal(
    np.asarray(ff(batch).forces),
    np.asarray(model_ff.ModelForceField(config, variables, capacity=300)(batch).forces),
  )
  with pytest.raises(InputError):
    model_ff.energies_per_atom(ff, structures())
  with pytest.raises(InputError, match="no such model directory"):
    model_ff.from_directory(str(tmp_path / "nothing"))

  ev = energy_model.init(config, jax.random.PRNGKey(1), batch)
  ev = energy_model.set_normalization(ev, energy_mean=-3.0, energy_std=0.2)
  path = str(tmp_path / "energy")
  model_io.save_model(path, kind="energy", config=config, variables=ev)
  need = graphs.required_capacity(batch, config.cutoff)
  eff = model_ff.from_directory(path, capacity=need // 2 + 1, derivative="autodiff")
  assert isinstance(eff, model_ff.EnergyModelForceField) and eff.derivative == "autodiff"
  per_atom = model_ff.energies_per_atom(eff, structures())  # grows the capacity once
  out = model_ff.EnergyModelForceField(config, ev, capacity=300, derivative="autodiff")(batch)
  assert not np.any(out.overflow) and np.all(np.isfinite(out.energy))
  np.testing.assert_allclose(per_atom, np.asarray(out.energy) / np.array([5, 3]), rtol=1e-5)
  assert np.all(np.isfinite(out.forces)) and np.all(np.isfinite(out.stress))
  assert np.abs(np.asarray(out.forces)).max() > 0


def test_packaged_models_by_name(model, tmp_path, monkeypatch):
  """``--model=fast`` loads the packaged fast model, no ``--model`` the default (the larger,
  more accurate one); a directory of that name wins over the package's; an unknown name is an
  ``InputError`` that lists the packaged names."""
  from crystal_search import relax

  default = relax.make_force_field("model")
  fast = relax.make_force_field("model", model="fast")
  assert default.config.width > fast.config.width
  assert relax.make_force_field("model", model="default").config == default.config
  monkeypatch.chdir(tmp_path)
  with pytest.raises(InputError, match="default or fast"):
    relax.make_force_field("model", model="fastest")
  _, config, variables = model
  model_io.save_model(
    str(tmp_path / "fast"), kind="force_stress", config=config, variables=variables
  )
  assert relax.make_force_field("model", model="fast").config.width == config.width


def test_the_default_model_stays_sane_on_short_contacts():
  """The packaged default, on Li13Si4 copies rattled by 0.3 Å (closest contacts 1.49-1.72 Å,
  shorter than any training frame's): its largest atomic force stays within 3x CHGNet's
  (21.4, 6.9, 9.23, 10.6 eV/Å, ``benchmarks/results/known_phase_basins.md``).
  ``pretrained.py:large_mae_cpu`` predicted 1.1e5, 6.2, 135 and 785 eV/Å there, and 3 of the 4 blew up."""
  import os
  import sys

  from pymatgen.io.ase import AseAtomsAdaptor

  from crystal_search import metrics, relax
  from crystal_search.force_fields.ase import CrystalSearchCalculator

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
  try:
    import known_phase_basins
  finally:
    sys.path.pop(0)

  phase = metrics.load_reference_phases()["Li13Si4 (mp-672287)"].get_primitive_structure()
  starts = known_phase_basins.perturbed(phase, copies=4, rattle=0.3, strain=0.05, seed=0)
  contacts = [known_phase_basins.closest_contact(s) for s in starts]
  assert max(contacts) < 1.75 and min(contacts) < 1.5  # the starts the note describes
  calculator = CrystalSearchCalculator(relax.make_force_field("model"))
  teacher = [21.4, 6.9, 9.23, 10.6]
  for start, chgnet_max in zip(starts, teacher, strict=True):
    atoms = AseAtomsAdaptor.get_atoms(start)
    atoms.calc = calculator
    largest = float(np.linalg.norm(atoms.get_forces(), axis=-1).max())
    assert np.isfinite(largest) and largest < 3.0 * chgnet_max, (largest, chgnet_max)
