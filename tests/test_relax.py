"""Tests of the batched damped-dynamics relaxer against independent references."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from scipy.optimize import minimize_scalar

from crystal_search import relax
from crystal_search.errors import InputError
from crystal_search.force_fields import analytic

SIGMA, EPS = 2.0, 0.1
R_ONSET, R_CUT = 2.0 * SIGMA, 2.5 * SIGMA
# Three images per axis suffice for these cells (no overflow retries except where tested).
LJ = analytic.lennard_jones(sigma=SIGMA, epsilon=EPS, images=3)
# One setting for most tests, so that they share compiled chunk functions.
TIGHT = dict(fmax=1e-3, smax=0.02, max_steps=400, trajectory_every=1)


def _lj_numpy(r):
  """Independent numpy LJ with jax-md's C^1 switching function (HOOMD form)."""
  x = (SIGMA / r) ** 6
  phi = 4 * EPS * (x * x - x)
  rc2, ro2, r2 = R_CUT**2, R_ONSET**2, r * r
  s = np.where(r < R_ONSET, 1.0, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3)
  return np.where(r < R_CUT, s * phi, 0.0)


def _fcc_energy_per_atom(a):
  """Lattice sum over an fcc Bravais lattice of cubic constant ``a`` (numpy, float64)."""
  prim = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], np.float64)
  n = int(np.ceil(R_CUT / (a / 2))) + 2
  grid = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
  r = np.linalg.norm(grid @ prim, axis=-1)
  r = r[r > 1e-9]
  return 0.5 * np.sum(_lj_numpy(r))


def _fcc_reference_a():
  res = minimize_scalar(_fcc_energy_per_atom, bounds=(2.6, 3.6), method="bounded")
  return res.x, res.fun


def _perturbed_fcc(seed, *, supercell=(1, 1, 1), a=3.1, displacement=0.15, strain=0.04):
  rng = np.random.default_rng(seed)
  s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Ar"], [[0, 0, 0]])
  s.make_supercell(supercell)
  eps = rng.uniform(-strain, strain, (3, 3))
  eps = 0.5 * (eps + eps.T)
  lattice = s.lattice.matrix @ (np.eye(3) + eps)
  cart = s.cart_coords + rng.uniform(-displacement, displacement, (len(s), 3))
  return Structure(Lattice(lattice), s.species, cart @ np.linalg.inv(s.lattice.matrix))


@functools.cache
def _jitted(force_field):
  return jax.jit(force_field.__call__)


@dataclasses.dataclass(frozen=True)
class NumpyForceField:
  """A host force field (numpy in and out) around a jittable one."""

  inner: object
  name: str = "numpy-wrapper"
  elements: tuple | None = None
  jittable: bool = False

  def __call__(self, crystals):
    out = _jitted(self.inner)(jax.tree_util.tree_map(jnp.asarray, crystals))
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), out)

  def grow(self):
    return dataclasses.replace(self, inner=self.inner.grow())


def test_fcc_lj_relaxes_to_reference_lattice_constant():
  a_ref, e_ref = _fcc_reference_a()
  # The reference is a 1-D minimum of an independent numpy lattice sum.
  assert 2.9 < a_ref < 3.3
  structures = [_perturbed_fcc(seed) for seed in range(3)]
  results = relax.relax_structures(structures, LJ, **TIGHT)
  for r in results:
    assert r.converged and not r.failed and r.steps > 3
    abc = np.asarray(r.final.lattice.abc)
    np.testing.assert_allclose(abc, a_ref, rtol=5e-3)
    np.testing.assert_allclose(r.final.lattice.angles, 90.0, atol=0.5)
    assert abs(r.energy / len(r.final) - e_ref) < 1e-3
    # Positions: back on an fcc lattice (every neighbour at a / sqrt 2).
    d = r.final.distance_matrix + np.eye(len(r.final)) * 99
    np.testing.assert_allclose(d.min(axis=1), a_ref / np.sqrt(2), rtol=5e-3)
    assert r.max_force < TIGHT["fmax"] and r.max_stress < TIGHT["smax"]


def test_damped_dynamics_first_step_is_the_documented_rule():
  """One update with SMASS=2 is x += alpha_ion F (Å) and L <- L (1 - alpha_cell sigma)."""
  s = _perturbed_fcc(0)
  from crystal_search.crystals import from_structures

  c = jax.tree_util.tree_map(jnp.asarray, from_structures([s], max_atoms=8))
  ff = LJ
  init_fn, apply_fn = relax.damped_dynamics(
    ff, potim=0.4, smass=2.0, max_displacement=10.0, max_strain=1.0
  )
  s0 = init_fn(c)
  s1 = jax.jit(apply_fn)(s0)
  a_ion, a_cell = 0.4 * 0.25, 0.4 * 1e-3
  out = ff(c)
  np.testing.assert_allclose(s0.forces, out.forces, atol=1e-6)
  want_l = c.lattice[0] @ (np.eye(3) - a_cell * np.asarray(out.stress[0]))
  np.testing.assert_allclose(s1.crystals.lattice[0], want_l, rtol=1e-5, atol=1e-6)
  want_cart = np.asarray(c.cartesian()[0] + a_ion * out.forces[0]) @ (
    np.eye(3) - a_cell * np.asarray(out.stress[0])
  )
  got_cart = np.asarray(s1.crystals.cartesian()[0])
  np.testing.assert_allclose(got_cart[:4], want_cart[:4], atol=1e-5)
  assert int(s1.step[0]) == 1 and int(s0.step[0]) == 0


def test_damping_keeps_memory_when_smass_below_two():
  """SMASS=0 (no damping) adds the previous step: v1 = v0 + 2 alpha F (velocity Verlet)."""
  from crystal_search.crystals import from_structures

  c = jax.tree_util.tree_map(jnp.asarray, from_structures([_perturbed_fcc(1)], max_atoms=8))
  ff = LJ
  init_fn, apply_fn = relax.damped_dynamics(
    ff, potim=0.1, smass=0.0, max_displacement=10.0, max_strain=1.0, relax_cell=False
  )
  s0 = init_fn(c)
  s1 = apply_fn(s0)
  s2 = apply_fn(s1)
  a = 0.1 * 0.25
  np.testing.assert_allclose(s1.velocity, 2 * a * s0.forces, atol=1e-6)
  np.testing.assert_allclose(s2.velocity, s1.velocity + 2 * a * s1.forces, atol=1e-6)
  np.testing.assert_allclose(s2.crystals.lattice, c.lattice)


def _ase_path(structure, steps, *, optimizer="FIRE", cell_filter=None):
  """Cartesian positions, cells and FIRE's ``dt`` (None for others) of ASE's own ``optimizer``
  (a class name of :mod:`ase.optimize`) on the LJ force field, step by step."""
  import ase.optimize
  from pymatgen.io.ase import AseAtomsAdaptor

  from crystal_search.force_fields.ase import CrystalSearchCalculator

  atoms = AseAtomsAdaptor.get_atoms(structure)
  atoms.calc = CrystalSearchCalculator(LJ)
  opt = getattr(ase.optimize, optimizer)(cell_filter(atoms) if cell_filter else atoms, logfile=None)
  path = []
  for _ in range(steps):
    opt.step()
    path.append((atoms.get_positions().copy(), atoms.cell.array.copy(), getattr(opt, "dt", None)))
  return path


def test_fire_positions_follow_ase_fire_step_by_step():
  """Fixed cell: our batched FIRE is ASE's FIRE (same defaults), to float32 precision."""
  s = _perturbed_fcc(3, supercell=(2, 1, 1), displacement=0.3)
  ours = _our_path(s, 40, optimizer="fire", relax_cell=False)
  theirs = _ase_path(s, 40)
  dts = [dt for _, _, dt in theirs]
  # The path exercises every branch: dt shrinks (uphill resets) and grows again.
  assert min(dts) < 0.1 and any(b > a for a, b in zip(dts, dts[1:]))
  for (p, _, dt), (q, _, dt_ase) in zip(ours, theirs):
    np.testing.assert_allclose(p, q, atol=1e-5)
    assert abs(dt - dt_ase) < 1e-6


def test_fire_cell_follows_ase_fire_with_the_frechet_cell_filter():
  """With the cell: ASE's FrechetCellFilter (log strain x N atoms, virial / N) to first order."""
  from ase.filters import FrechetCellFilter

  s = _perturbed_fcc(3, supercell=(2, 1, 1), displacement=0.2, strain=0.06)
  ours = _our_path(s, 30, optimizer="fire")
  theirs = _ase_path(s, 30, cell_filter=FrechetCellFilter)
  moved = np.abs(theirs[-1][1] - s.lattice.matrix).max()
  assert moved > 0.05  # the cell really relaxes (Å)
  for (p, cell, _), (q, cell_ase, _) in zip(ours, theirs):
    # Exponential vs linear strain steps differ at second order: 1e-3 Å (cell) and 5e-3 Å
    # (atoms) over 30 steps, against steps of up to 0.2 Å.
    np.testing.assert_allclose(cell, cell_ase, atol=1e-3)
    np.testing.assert_allclose(p, q, atol=5e-3)


def _our_path(structure, steps, **kwargs):
  from crystal_search.crystals import from_structures

  c = jax.tree_util.tree_map(jnp.asarray, from_structures([structure], max_atoms=8))
  init_fn, apply_fn = relax.damped_dynamics(
    LJ, fmax=1e-9, smax=1e-9, max_steps=10_000, max_displacement=10.0, max_strain=10.0, **kwargs
  )
  state, apply_fn = init_fn(c), jax.jit(apply_fn)
  path = []
  for _ in range(steps):
    state = apply_fn(state)
    cart = np.asarray(state.crystals.cartesian()[0, : len(structure)])
    path.append((cart, np.asarray(state.crystals.lattice[0]), float(state.fire_dt[0])))
  return path


def test_lbfgs_positions_follow_ase_lbfgs_step_by_step():
  """Fixed cell: our batched L-BFGS is ASE's LBFGS (same defaults), to float32 precision."""
  s = _perturbed_fcc(3, supercell=(2, 1, 1), displacement=0.3)
  ours = _our_path(s, 25, optimizer="lbfgs", lbfgs_scaling=False, relax_cell=False)
  theirs = _ase_path(s, 25, optimizer="LBFGS")
  assert np.abs(theirs[-1][0] - theirs[0][0]).max() > 0.05  # the atoms really move (Å)
  for (p, _, _), (q, _, _) in zip(ours, theirs):
    np.testing.assert_allclose(p, q, atol=2e-4)


def test_lbfgs_cell_follows_ase_lbfgs_with_the_frechet_cell_filter():
  """With the cell: ASE's FrechetCellFilter to first order in the strain step."""
  from ase.filters import FrechetCellFilter

  s = _perturbed_fcc(3, supercell=(2, 1, 1), displacement=0.2, strain=0.06)
  ours = _our_path(s, 15, optimizer="lbfgs", lbfgs_scaling=False)
  theirs = _ase_path(s, 15, optimizer="LBFGS", cell_filter=FrechetCellFilter)
  assert np.abs(theirs[-1][1] - s.lattice.matrix).max() > 0.05  # the cell really relaxes (Å)
  for (p, cell, _), (q, cell_ase, _) in zip(ours, theirs):
    np.testing.assert_allclose(cell, cell_ase, atol=2e-3)
    np.testing.assert_allclose(p, q, atol=1e-2)


def test_lbfgs_needs_fewer_steps_than_fire_and_reaches_the_same_minimum():
  a_ref, e_ref = _fcc_reference_a()
  starts = [_perturbed_fcc(seed) for seed in range(3)]
  fire = relax.relax_structures(starts, LJ, optimizer="fire", **TIGHT)
  lbfgs = relax.relax_structures(starts, LJ, optimizer="lbfgs", **TIGHT)
  for r in lbfgs:
    assert r.converged and not r.failed
    np.testing.assert_allclose(r.final.lattice.abc, a_ref, rtol=5e-3)
    assert abs(r.energy / len(r.final) - e_ref) < 1e-3
  assert sum(r.steps for r in lbfgs) < sum(r.steps for r in fire)


def test_lbfgs_in_flight_batching_equals_structures_alone():
  """A refilled slot starts without the previous structure's history: a batch of 2 slots over
  5 structures gives each the path it takes alone."""
  structures = [_perturbed_fcc(40 + k, displacement=0.05 + 0.03 * k) for k in range(5)]
  batched = relax.relax_structures(
    structures, LJ, optimizer="lbfgs", batch_size=2, chunk_steps=3, **TIGHT
  )
  for s, r in zip(structures, batched):
    (alone,) = relax.relax_structures([s], LJ, optimizer="lbfgs", **TIGHT)
    assert r.steps == alone.steps and r.converged == alone.converged
    np.testing.assert_allclose(r.final.lattice.matrix, alone.final.lattice.matrix, atol=1e-4)


def test_fire_relaxes_fcc_lj_to_the_reference_lattice_constant():
  a_ref, e_ref = _fcc_reference_a()
  results = relax.relax_structures(
    [_perturbed_fcc(seed) for seed in range(3)], LJ, optimizer="fire", **TIGHT
  )
  for r in results:
    assert r.converged and not r.failed
    np.testing.assert_allclose(r.final.lattice.abc, a_ref, rtol=5e-3)
    assert abs(r.energy / len(r.final) - e_ref) < 1e-3
    # Energy goes down overall along the path (FIRE may go uphill for a step, then resets).
    e = r.trajectory["energy"]
    assert e[-1] < e[0]


def test_fire_in_flight_batching_resets_the_optimiser_state_of_refilled_slots():
  structures = [_perturbed_fcc(20 + k, displacement=0.05 + 0.02 * k) for k in range(6)]
  settings = dict(TIGHT, optimizer="fire")
  big = relax.relax_structures(structures, LJ, batch_size=6, **settings)
  small = relax.relax_structures(structures, LJ, batch_size=2, chunk_steps=9, **settings)
  for a, b in zip(big, small):
    assert a.steps == b.steps and a.converged and b.converged
    np.testing.assert_allclose(a.trajectory["positions"], b.trajectory["positions"], atol=1e-5)


def test_padded_mixed_sizes_equal_each_alone():
  structures = [
    _perturbed_fcc(0),
    _perturbed_fcc(1, supercell=(2, 1, 1)),
    _perturbed_fcc(2, supercell=(2, 2, 1)),
    _perturbed_fcc(3, supercell=(3, 1, 1)),
  ]
  # Force all into one padded 16-slot batch, then each alone in the same bucket.
  settings = TIGHT
  together = relax.relax_structures(structures, LJ, **settings)
  for s, r in zip(structures, together):
    (alone,) = relax.relax_structures([s], LJ, **settings)
    assert r.steps == alone.steps and r.converged == alone.converged
    np.testing.assert_allclose(r.final.lattice.matrix, alone.final.lattice.matrix, atol=1e-4)
    np.testing.assert_allclose(r.trajectory["forces"], alone.trajectory["forces"], atol=1e-4)
    assert abs(r.energy - alone.energy) < 1e-4


@pytest.mark.parametrize("optimizer", relax.OPTIMIZERS)
def test_host_path_gives_the_jitted_trajectory(optimizer):
  structures = [_perturbed_fcc(4), _perturbed_fcc(5, supercell=(2, 1, 1))]
  settings = dict(TIGHT, max_steps=60, optimizer=optimizer)
  jit_res = relax.relax_structures(structures, LJ, **settings)
  host_res = relax.relax_structures(structures, NumpyForceField(LJ), **settings)
  for a, b in zip(jit_res, host_res):
    assert a.steps == b.steps and a.converged == b.converged
    for key, tol in (("positions", 1e-5), ("lattice", 1e-4), ("forces", 1e-4), ("energy", 1e-4)):
      np.testing.assert_allclose(a.trajectory[key], b.trajectory[key], atol=tol, err_msg=key)
    # kBar: float32 round-off on stresses of ~50 kBar.
    np.testing.assert_allclose(a.trajectory["stress"], b.trajectory["stress"], atol=5e-3)


def test_trajectory_every_k_and_extxyz(tmp_path):
  import ase.io

  from crystal_search import units

  (r,) = relax.relax_structures([_perturbed_fcc(6)], LJ, **dict(TIGHT, trajectory_every=3))
  t = r.trajectory
  assert t["positions"].shape == (r.steps // 3 + 1, 4, 3)
  np.testing.assert_array_equal(t["step"], np.arange(len(t["step"])) * 3)
  (r1,) = relax.relax_structures([_perturbed_fcc(6)], LJ, **TIGHT)
  np.testing.assert_allclose(t["lattice"], r1.trajectory["lattice"][::3], atol=1e-5)
  path = str(tmp_path / "t.extxyz")
  relax.write_trajectory(r1, path)
  frames = ase.io.read(path, index=":")
  assert len(frames) == r1.steps + 1
  np.testing.assert_allclose(frames[-1].get_forces(), r1.trajectory["forces"][-1], atol=1e-5)
  np.testing.assert_allclose(
    units.stress_from_ase(frames[0].get_stress()), r1.trajectory["stress"][0], atol=1e-3
  )
  assert abs(frames[-1].get_potential_energy() - r1.energy) < 1e-5


def test_config_validation():
  with pytest.raises(InputError, match="smass"):
    relax.make_config(smass=3.0)
  with pytest.raises(InputError, match="unknown field"):
    relax.make_config(not_a_field=1)
  with pytest.raises(InputError, match="max_steps"):
    relax.make_config(max_steps=0)
  with pytest.raises(InputError, match="min_cell_height"):
    relax.make_config(min_distance=1.0, min_cell_height=1.5)
  with pytest.raises(InputError, match="overlap_fraction"):
    relax.make_config(overlap_fraction=1.5)
  with pytest.raises(InputError, match="optimizer"):
    relax.make_config(optimizer="bfgs")
  with pytest.raises(InputError, match="fire_dt"):
    relax.make_config(fire_dt=2.0, fire_dt_max=1.0)
  with pytest.raises(InputError, match="fire_max_step"):
    relax.make_config(fire_max_step=0.0)
  c = relax.make_config({"potim": 0.2}, fmax=1)
  assert c.potim == 0.2 and c.fmax == 1.0 and c.smass == 2.0 and c.optimizer == "damped"


@dataclasses.dataclass(frozen=True)
class PoisonedForceField:
  """Jittable: LJ, but NaN forces for structures holding krypton once their volume shrinks."""

  inner: object
  volume_below: float
  name: str = "poisoned"
  elements: tuple | None = None
  jittable: bool = True

  def __call__(self, crystals):
    out = self.inner(crystals)
    poisoned = jnp.any(crystals.atomic_numbers == 36, axis=-1)
    poisoned = poisoned & (jnp.abs(crystals.volume()) < self.volume_below)
    forces = jnp.where(poisoned[:, None, None], jnp.nan, out.forces)
    return out.replace(forces=forces)

  def grow(self):
    return dataclasses.replace(self, inner=self.inner.grow())


def test_failures_are_flagged_and_the_batch_is_unaffected():
  good = [_perturbed_fcc(10), _perturbed_fcc(11, supercell=(2, 1, 1))]
  # Expanded by 4 %: relaxing shrinks it (to 0.889 V0 at step 1, 0.887 V0 at step 2) and
  # crosses the poisoning volume mid-run.
  kr = _perturbed_fcc(12, a=3.1 * 1.04, displacement=0.05, strain=0.0)
  kr.replace_species({"Ar": "Kr"})
  overlap = _perturbed_fcc(13)
  overlap.translate_sites([1], overlap[0].coords - overlap[1].coords + 0.2, frac_coords=False)
  assert overlap.distance_matrix[0, 1] < 0.4
  ff = PoisonedForceField(LJ, volume_below=0.888 * kr.volume)
  settings = TIGHT
  results = relax.relax_structures([good[0], kr, overlap, good[1]], ff, **settings)
  r_good0, r_kr, r_overlap, r_good1 = results
  assert r_kr.failed and r_kr.failure_reason == "nan" and not r_kr.converged
  assert 0 < r_kr.steps < 100
  # Frozen at its last good configuration, with finite forces.
  assert r_kr.final.volume >= ff.volume_below * 0.999 and np.all(np.isfinite(r_kr.forces))
  assert r_overlap.failed and r_overlap.failure_reason == "overlap" and r_overlap.steps == 0
  alone = relax.relax_structures(good, ff, **settings)
  for r, a in zip((r_good0, r_good1), alone):
    assert r.converged and not r.failed and r.steps == a.steps
    np.testing.assert_allclose(r.trajectory["positions"], a.trajectory["positions"], atol=1e-5)


def _li_si_pair(distance: float) -> Structure:
  """Bcc-like Li-Si cell (a = 3.0 Å) with the Si moved to ``distance`` Å of the Li."""
  return Structure(Lattice.cubic(3.0), ["Li", "Si"], [[0, 0, 0], [distance / 3.0, 0, 0]])


def test_overlap_ratio_is_element_aware_and_sees_every_image():
  from ase.data import covalent_radii

  from crystal_search import crystals as crystals_lib

  rng = np.random.default_rng(3)
  structures = []
  for _ in range(4):  # skewed cells, atoms near the faces: the closest image is not the wrapped one
    lattice = np.diag(rng.uniform(2.2, 3.2, 3)) + rng.uniform(-1.0, 1.0, (3, 3)) * (1 - np.eye(3))
    frac = rng.uniform(-0.1, 1.1, (5, 3))
    structures.append(Structure(Lattice(lattice), ["Li", "Si", "Li", "Si", "Li"], frac))
  batch = crystals_lib.from_structures(structures)
  d = np.asarray(relax.pair_distances(batch))
  ratio = np.asarray(relax.overlap_ratio(batch, min_distance=0.5, overlap_fraction=0.5))
  for b, s in enumerate(structures):
    expected = s.distance_matrix  # pymatgen: the shortest over all images
    height = float(np.min(crystals_lib.cell_heights(s.lattice.matrix)))
    off = ~np.eye(len(s), dtype=bool)
    near = off & (expected < height)
    np.testing.assert_allclose(d[b, : len(s), : len(s)][near], expected[near], rtol=1e-5, atol=1e-5)
    r = np.array([covalent_radii[site.specie.Z] for site in s])
    threshold = np.maximum(0.5 * (r[:, None] + r[None, :]), 0.5)
    np.testing.assert_allclose(ratio[b], np.min((expected / threshold)[off]), rtol=1e-5)
  heights = [float(np.min(crystals_lib.cell_heights(s.lattice.matrix))) for s in structures]
  assert min(heights) < 2 * 1.28  # this batch takes the 27-image branch; a thick one does not
  thick = [Structure(Lattice.cubic(6.0), s.species, s.frac_coords) for s in structures]
  ratio = np.asarray(relax.overlap_ratio(crystals_lib.from_structures(thick)))
  for b, s in enumerate(thick):
    r = np.array([covalent_radii[site.specie.Z] for site in s])
    threshold = np.maximum(0.5 * (r[:, None] + r[None, :]), 0.5)
    off = ~np.eye(len(s), dtype=bool)
    np.testing.assert_allclose(ratio[b], np.min((s.distance_matrix / threshold)[off]), rtol=1e-5)
  # A sheared cell 1.3 Å thick: the wrapped difference puts Si 1.75 Å from Li, an image 0.94 Å.
  sheared = Lattice([[2.6, 0, 0], [2.2, 1.3, 0], [0, 0, 4.0]])
  s = Structure(sheared, ["Li", "Si"], [[0, 0, 0], [0.45, 0.25, 0]])
  assert s.distance_matrix[0, 1] < 0.94
  ratio = np.asarray(relax.overlap_ratio(crystals_lib.from_structures([s])))
  np.testing.assert_allclose(ratio, [s.distance_matrix[0, 1] / 1.195], rtol=1e-4)
  # Li-Si: 0.5 * (1.28 + 1.11) = 1.195 Å.
  pairs = crystals_lib.from_structures([_li_si_pair(0.86), _li_si_pair(1.30)])
  ratio = np.asarray(relax.overlap_ratio(pairs, min_distance=0.5, overlap_fraction=0.5))
  np.testing.assert_allclose(ratio, [0.86 / 1.195, 1.30 / 1.195], rtol=1e-4)
  flat = np.asarray(relax.overlap_ratio(pairs, min_distance=0.5, overlap_fraction=0.0))
  np.testing.assert_allclose(flat, [0.86 / 0.5, 1.30 / 0.5], rtol=1e-4)


def test_a_close_li_si_contact_fails_as_overlap_and_a_looser_one_relaxes():
  """0.86 Å Li-Si (what a 4-block model once returned "converged") is flagged by the default
  element-aware threshold, not by the flat 0.5 Å one; 1.30 Å starts and is pushed apart."""
  close, loose = _li_si_pair(0.86), _li_si_pair(1.30)
  settings = dict(fmax=0.05, smax=5.0, max_steps=5)
  r_close, r_loose = relax.relax_structures([close, loose], LJ, **settings)
  assert r_close.failed and r_close.failure_reason == "overlap" and r_close.steps == 0
  assert r_loose.steps > 0 and r_loose.failure_reason != "overlap"
  (r_flat,) = relax.relax_structures([close], LJ, overlap_fraction=0.0, **settings)
  assert r_flat.steps > 0 and r_flat.failure_reason != "overlap"


def test_volume_and_cell_collapse_failures():
  s = _perturbed_fcc(14, a=3.1 * 1.05, displacement=0.02, strain=0.0)
  # Relaxed, it would shrink to 0.86 V0; with 1 % strain steps it crosses 0.9 V0 mid-run.
  (r,) = relax.relax_structures([s], LJ, max_strain=0.01, min_volume_ratio=0.9, **TIGHT)
  assert r.failed and r.failure_reason == "volume" and r.steps > 2
  assert r.final.volume >= 0.9 * s.volume * (1 - 1e-5)
  (r,) = relax.relax_structures([s], LJ, min_cell_height=3.3, **TIGHT)
  assert r.failed and r.failure_reason == "cell_collapse" and r.steps == 0


def test_converged_structures_stay_fixed_while_others_move():
  (relaxed,) = relax.relax_structures([_perturbed_fcc(15)], LJ, **TIGHT)
  assert relaxed.converged
  from crystal_search.crystals import from_structures

  c = from_structures([relaxed.final, _perturbed_fcc(16)], max_atoms=8)
  c = jax.tree_util.tree_map(jnp.asarray, c)
  init_fn, apply_fn = relax.damped_dynamics(LJ, potim=0.4, smass=2.0, fmax=1e-3, smax=0.02)
  state = init_fn(c)
  apply_fn = jax.jit(apply_fn)
  for _ in range(10):
    state = apply_fn(state)
  assert bool(state.converged[0]) and int(state.step[0]) == 0
  np.testing.assert_array_equal(state.crystals.positions[0], c.positions[0])
  np.testing.assert_array_equal(state.crystals.lattice[0], c.lattice[0])
  assert int(state.step[1]) == 10
  assert np.max(np.abs(state.crystals.positions[1] - c.positions[1])) > 1e-3


def test_in_flight_batching_equals_one_big_batch_without_recompiling():
  structures = [_perturbed_fcc(20 + k, displacement=0.05 + 0.02 * k) for k in range(8)]
  ff = analytic.lennard_jones(sigma=SIGMA, epsilon=EPS, images=3)  # fresh: not in the jit cache
  settings = dict(TIGHT, trajectory_every=2)
  big = relax.relax_structures(structures, ff, batch_size=8, **settings)
  stats = {}
  small = relax.relax_structures(
    structures, ff, batch_size=3, chunk_steps=7, compact=False, stats=stats, **settings
  )
  assert stats["batch_sizes"] == {8: 3}
  assert stats["chunks"] > 5 and stats["compiles"] == 1 and stats["compactions"] == 0
  for a, b in zip(big, small):
    assert a.steps == b.steps and a.converged and b.converged
    np.testing.assert_allclose(a.final.lattice.matrix, b.final.lattice.matrix, atol=1e-5)
    np.testing.assert_allclose(a.trajectory["positions"], b.trajectory["positions"], atol=1e-5)


def test_early_refill_ends_chunks_sooner_with_the_same_results():
  """With structures queued, a chunk ends once refill_fraction of the batch has finished: more,
  shorter chunks, fewer idle slot-steps, each structure relaxed exactly as before."""
  structures = [_perturbed_fcc(60 + k, displacement=0.03 + 0.03 * k) for k in range(8)]
  runs = {}
  for fraction in (1.0, 0.25):
    stats = {}
    results = relax.relax_structures(
      structures, LJ, batch_size=4, chunk_steps=50, refill_fraction=fraction, stats=stats, **TIGHT
    )
    runs[fraction] = (results, stats)
  (late, s_late), (early, s_early) = runs[1.0], runs[0.25]
  assert s_early["chunks"] > s_late["chunks"]
  assert s_early["slot_steps"] < s_late["slot_steps"]
  assert s_early["structure_steps"] == s_late["structure_steps"]
  for a, b in zip(late, early):
    assert a.steps == b.steps and a.converged and b.converged
    np.testing.assert_allclose(a.final.frac_coords, b.final.frac_coords, atol=1e-6)


def test_no_structures_give_no_results_and_zero_counters():
  stats = {}
  assert relax.relax_structures([], LJ, stats=stats) == []
  assert stats["structure_steps"] == stats["slot_steps"] == stats["compiles"] == 0


def test_compact_size_is_the_smallest_power_of_two_batch_per_device():
  assert [relax.compact_size(n) for n in (1, 2, 3, 4, 5, 31, 32, 33)] == [1, 2, 4, 4, 8, 32, 32, 64]
  assert [relax.compact_size(n, 4) for n in (1, 4, 5, 9, 17)] == [4, 4, 8, 16, 32]


def test_compaction_moves_the_slow_tail_into_smaller_batches_with_the_same_results():
  # Distortions from tiny to large: steps to converge differ, so the batch empties unevenly.
  distortions = [(0.001, 0.0), (0.01, 0.005), (0.05, 0.01), (0.1, 0.02)]
  distortions += [(0.15, 0.04), (0.2, 0.06), (0.25, 0.08), (0.3, 0.1)]
  structures = [
    _perturbed_fcc(60 + k, displacement=d, strain=e) for k, (d, e) in enumerate(distortions)
  ]
  ff = analytic.lennard_jones(sigma=SIGMA, epsilon=EPS, images=3)  # fresh: not in the jit cache
  settings = dict(TIGHT, potim=0.1, trajectory_every=2, chunk_steps=5)
  whole, compacted = {}, {}
  ref = relax.relax_structures(structures, ff, compact=False, stats=whole, **settings)
  out = relax.relax_structures(
    structures, ff, stats=compacted, compact_factor=2, compact_min_batch=2, **settings
  )
  steps = sorted(r.steps for r in ref)
  assert steps[0] + 50 < steps[-1], steps  # the premise: an uneven batch
  assert whole["compactions"] == 0 and whole["batch_sizes"] == {8: 8}
  assert compacted["compactions"] >= 2  # 8 -> 4 -> 2 or 1 at least
  # One compile per batch size used (8 and the smaller powers of two).
  assert compacted["compiles"] == 1 + compacted["compactions"]
  assert compacted["structure_steps"] == whole["structure_steps"]
  # Compaction removes at least half of the work spent on finished slots.
  padding = whole["slot_steps"] - whole["structure_steps"]
  assert compacted["slot_steps"] - compacted["structure_steps"] < 0.5 * padding
  for a, b in zip(ref, out):
    assert a.steps == b.steps and a.converged and b.converged
    np.testing.assert_allclose(a.final.lattice.matrix, b.final.lattice.matrix, atol=1e-5)
    np.testing.assert_allclose(a.trajectory["positions"], b.trajectory["positions"], atol=1e-5)
    np.testing.assert_allclose(a.trajectory["forces"], b.trajectory["forces"], atol=1e-4)


def test_overflow_grows_the_force_field_and_reruns():
  small = analytic.lennard_jones(sigma=SIGMA, epsilon=EPS, images=1)
  stats = {}
  structures = [_perturbed_fcc(30), _perturbed_fcc(31)]
  grown = relax.relax_structures(structures, small, stats=stats, **TIGHT)
  assert stats["retries"] == 2 and stats["force_field"].images == 3
  ref = relax.relax_structures(structures, LJ, **TIGHT)
  for a, b in zip(grown, ref):
    assert a.steps == b.steps
    np.testing.assert_allclose(a.final.lattice.matrix, b.final.lattice.matrix, atol=1e-5)


def test_unsupported_element_is_an_input_error():
  ff = dataclasses.replace(LJ, elements=("Ar",))
  s = _perturbed_fcc(0)
  s.replace_species({"Ar": "Ne"})
  with pytest.raises(InputError, match="Ne"):
    relax.relax_structures([s], ff)


_SHARDING_SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from test_relax import LJ, TIGHT, _perturbed_fcc
from crystal_search import relax
structures = [_perturbed_fcc(40 + k, supercell=(1 + k % 2, 1, 1)) for k in range(6)]
stats4, stats1 = {{}}, {{}}
r4 = relax.relax_structures(structures, LJ, stats=stats4, **TIGHT)
r1 = relax.relax_structures(structures, LJ, num_devices=1, stats=stats1, **TIGHT)
print(json.dumps(dict(
  devices=jax.device_count(), batch4=stats4["batch_sizes"], batch1=stats1["batch_sizes"],
  steps4=[r.steps for r in r4], steps1=[r.steps for r in r1],
  lat=float(max(np.abs(a.final.lattice.matrix - b.final.lattice.matrix).max() for a, b in zip(r4, r1))),
  traj=float(max(np.abs(a.trajectory["positions"] - b.trajectory["positions"]).max() for a, b in zip(r4, r1))),
)))
"""


@pytest.mark.slow
def test_four_device_sharding_equals_one_device():
  import json

  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  script = _SHARDING_SCRIPT.format(tests=os.path.dirname(__file__))
  out = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["devices"] == 4
  assert all(b % 4 == 0 for b in got["batch4"].values())
  assert got["steps4"] == got["steps1"]
  assert got["lat"] < 1e-4 and got["traj"] < 1e-4


def test_relax_files_reports_bad_inputs_and_writes_the_rest(tmp_path):
  import json

  import ase.io
  from pymatgen.io.ase import AseAtomsAdaptor

  inp = tmp_path / "in"
  inp.mkdir()
  _perturbed_fcc(50).to(filename=str(inp / "a.cif"))
  _perturbed_fcc(51, supercell=(2, 1, 1)).to(filename=str(inp / "b.vasp"), fmt="poscar")
  (inp / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
  ne = _perturbed_fcc(52)
  ne.replace_species({"Ar": "Ne"})
  ne.to(filename=str(inp / "ne.cif"))
  # Two frames in one file: the second has two atoms on one spot and fails alone.
  good, bad = _perturbed_fcc(53), _perturbed_fcc(54)
  bad.replace(1, "Ar", bad[0].frac_coords)
  ase.io.write(str(inp / "two.extxyz"), [AseAtomsAdaptor.get_atoms(x) for x in (good, bad)])
  lines = []
  ff = dataclasses.replace(LJ, elements=("Ar",))
  out = tmp_path / "out"
  summary = relax.relax_files(
    str(inp / "*"), ff, str(out), config=TIGHT, trajectories=True, log=lines.append
  )
  frames = [e for e in summary["structures"] if e["file"].endswith("two.extxyz")]
  assert [e["failed"] for e in frames] == [False, True] and "overlap" in frames[1]["error"]
  by_file = {os.path.basename(e["file"]): e for e in summary["structures"] if e not in frames}
  assert set(by_file) == {"a.cif", "b.vasp", "broken.cif", "ne.cif"}
  assert by_file["broken.cif"]["failed"] and "broken.cif" in by_file["broken.cif"]["error"]
  assert by_file["ne.cif"]["failed"] and "Ne" in by_file["ne.cif"]["error"]
  assert len(lines) == 3 and all(line.startswith("error: ") and "\n" not in line for line in lines)
  for name in ("a.cif", "b.vasp"):
    e = by_file[name]
    assert e["converged"] and not e["failed"] and e["steps"] > 0
    relaxed = Structure.from_file(str(out / e["cif"]))
    assert len(relaxed) == e["n_atoms"]
    frames = ase.io.read(str(out / e["trajectory"]), index=":")
    assert len(frames) == e["steps"] + 1
  on_disk = json.loads((out / "summary.json").read_text())
  assert on_disk["counts"] == {"inputs": 6, "relaxed": 3, "converged": 3, "failed": 3}


def test_relax_binary_model_errors_are_one_line(tmp_path):
  """A missing --model directory stops the run in one line; with the shipped default model an
  unsupported element (Ar) is reported per structure in one line and the run still finishes."""
  _perturbed_fcc(0).to(filename=str(tmp_path / "a.cif"))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def relax(*extra):
    cmd = [
      sys.executable,
      "-m",
      "experiments.relax",
      f"--input={tmp_path / 'a.cif'}",
      f"--output_dir={tmp_path / 'out'}",
      *extra,
    ]
    return subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)

  missing = tmp_path / "no_such_model"
  proc = relax(f"--model={missing}")
  assert proc.returncode == 1
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]
  shipped = os.path.join(repo, "crystal_search", "pretrained", "force_stress")
  if os.path.isdir(shipped):
    proc = relax()
    lines = [ln for ln in proc.stderr.strip().splitlines() if "Ar" in ln]
    assert len(lines) == 1 and "not supported" in lines[0]
    assert os.path.exists(tmp_path / "out" / "summary.json")


def test_pair_potential_multi_image_sum_matches_brute_force():
  """Morse energy of a small sheared cell (cutoff > cell width) vs a numpy sum over many images."""
  from crystal_search.crystals import from_structures

  rng = np.random.default_rng(0)
  lattice = np.array([[2.9, 0.0, 0.0], [1.2, 2.7, 0.0], [0.4, -0.6, 3.1]])
  frac = rng.uniform(0, 1, (3, 3))
  s = Structure(Lattice(lattice), ["Si"] * 3, frac)
  ff = analytic.morse(sigma=2.5, epsilon=0.3, alpha=1.5)  # r_cutoff = 4.83 Å > cell heights
  sigma, eps, alpha, ro, rc = 2.5, 0.3, 1.5, 2.5 + 2.5 / 1.5, ff.r_cutoff

  def phi(r):
    u = eps * (1 - np.exp(-alpha * (r - sigma))) ** 2 - eps
    sw = np.where(
      r < ro, 1.0, (rc**2 - r**2) ** 2 * (rc**2 + 2 * r**2 - 3 * ro**2) / (rc**2 - ro**2) ** 3
    )
    return np.where(r < rc, u * sw, 0.0)

  n = 6
  shifts = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
  cart = frac @ lattice
  e_ref = 0.0
  for i in range(3):
    for j in range(3):
      d = cart[j] - cart[i] + shifts @ lattice
      r = np.linalg.norm(d, axis=-1)
      r = r[r > 1e-9]
      e_ref += 0.5 * np.sum(phi(r))
  c = jax.tree_util.tree_map(jnp.asarray, from_structures([s], max_atoms=8))
  grown = ff
  while bool(grown(c).overflow[0]):
    grown = grown.grow()
  assert grown.images >= 2
  out = grown(c)
  np.testing.assert_allclose(float(out.energy[0]), e_ref, rtol=1e-4, atol=1e-4)
  # A too-small image range is flagged, never silently wrong.
  assert bool(ff(c).overflow[0])


def test_a_cell_whose_neighbour_capacity_cannot_be_met_fails_alone():
  """A strongly skewed 8 Å^3 cell keeps overflowing the network's image range: it is failed as
  ``capacity`` (or by an earlier check) while the other structure of the batch relaxes."""
  from pymatgen.core import Lattice, Structure

  from crystal_search.force_fields.registry import make_force_field

  skewed = Structure(
    Lattice([[8, 0, 0], [7.9, 1, 0], [7.9, 0.9, 1]]),
    ["Li", "Si", "Li", "Si"],
    [[f, f, f] for f in (0, 0.25, 0.5, 0.75)],
  )
  good = Structure(Lattice.cubic(3.0), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  ff = make_force_field("model", model="fast")
  bad, ok = relax.relax_structures([skewed, good], ff, max_steps=5, max_retries=1)
  assert bad.failed and bad.failure_reason in relax.FAILURE_REASONS[1:]
  assert not ok.failed and ok.steps > 0


def test_automatic_batch_sizes_are_powers_of_two_and_compaction_skips_small_steps():
  """6 structures of one bucket run in 4 slots (in flight); a batch below compact_min_batch (16)
  never compacts, so only one program compiles."""
  structures = [_perturbed_fcc(80 + k, displacement=0.02 + 0.05 * k) for k in range(6)]
  stats = {}
  results = relax.relax_structures(structures, LJ, stats=stats, chunk_steps=5, **TIGHT)
  assert stats["batch_sizes"] == {8: 4}
  assert stats["compactions"] == 0 and stats["compiles"] == 1
  assert all(r.converged for r in results)


@pytest.mark.parametrize("optimizer", relax.OPTIMIZERS)
def test_every_optimizer_keeps_a_converged_start_and_flags_an_overlapping_one(optimizer):
  """In one batch: a relaxed fcc cell stops at step 0, two atoms 0.3 Å apart fail as ``overlap``
  (never returned as converged), and a perturbed cell still converges."""
  a_ref, _ = _fcc_reference_a()
  relaxed = _perturbed_fcc(0, a=a_ref, displacement=0.0, strain=0.0)
  overlapping = _perturbed_fcc(1, supercell=(2, 1, 1))
  overlapping.replace(
    1, "Ar", overlapping[0].coords + np.array([0.3, 0.0, 0.0]), coords_are_cartesian=True
  )
  start, bad, moving = relax.relax_structures(
    [relaxed, overlapping, _perturbed_fcc(2)], LJ, optimizer=optimizer, fmax=0.02, smax=0.5
  )
  assert start.converged and start.steps == 0 and not start.failed
  assert bad.failed and bad.failure_reason == "overlap" and not bad.converged
  assert moving.converged and moving.steps > 0 and not moving.failed


def test_small_buckets_join_the_next_wider_one():
  from crystal_search.relax.driver import merge_small_buckets

  buckets = {8: [0, 5], 16: [1], 24: [2, 3, 4, 6], 40: [7]}
  assert merge_small_buckets(buckets, 0) == buckets
  assert merge_small_buckets(buckets, 3) == {16: [0, 1, 5], 24: [2, 3, 4, 6], 40: [7]}
  assert merge_small_buckets(buckets, 4) == {24: [0, 1, 2, 3, 4, 5, 6], 40: [7]}
  assert merge_small_buckets(buckets, 100) == {40: list(range(8))}


def test_merged_buckets_relax_like_their_own():
  """Small cells relaxed in a wider bucket (min_bucket_structures) end where they end alone."""
  structures = [_perturbed_fcc(90, displacement=0.05)]
  structures += [_perturbed_fcc(91 + k, displacement=0.05, supercell=(2, 2, 2)) for k in range(2)]
  stats_apart, stats_merged = {}, {}
  apart = relax.relax_structures(
    structures, LJ, stats=stats_apart, min_bucket_structures=0, **TIGHT
  )
  merged = relax.relax_structures(
    structures, LJ, stats=stats_merged, min_bucket_structures=2, **TIGHT
  )
  assert len(stats_apart["batch_sizes"]) == 2 and len(stats_merged["batch_sizes"]) == 1
  for a, b in zip(apart, merged):
    assert a.converged and b.converged and a.steps == b.steps
    np.testing.assert_allclose(a.final.frac_coords, b.final.frac_coords, atol=1e-5)
