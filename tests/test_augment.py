"""Augmentation: rotations move structures and labels consistently; noise statistics; seeds."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from training_data import label, random_cells

from crystal_search import augment
from crystal_search.crystals import Crystals


def test_rotations_are_proper_90_degree_rotations():
  for r in augment.ROTATIONS_90:
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)
    angle = np.degrees(np.linalg.norm(Rotation.from_matrix(r).as_rotvec()))
    assert np.isclose(angle, 90.0)
  # Six distinct matrices: ±90 degrees about x, y and z.
  assert len({tuple(np.round(r).astype(int).ravel()) for r in augment.ROTATIONS_90}) == 6


def test_rotated_structure_has_rotated_forces_and_stress():
  """Label the rotated cell with an analytic potential: it must equal the rotated labels."""
  crystals = random_cells(0, 4)
  forces, stress, energy = label(crystals)
  rotations = np.stack([augment.ROTATIONS_90[k] for k in (0, 1, 5, 2)])
  rot_crystals, rot_forces, rot_stress = augment.rotate(crystals, forces, stress, rotations)
  np.testing.assert_array_equal(rot_crystals.positions, crystals.positions)
  ref_forces, ref_stress, ref_energy = label(rot_crystals)
  np.testing.assert_allclose(ref_energy, energy, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rot_forces, ref_forces, atol=2e-4)
  np.testing.assert_allclose(rot_stress, ref_stress, atol=2e-2 + 1e-4 * np.abs(stress).max())
  # The labels really changed (not a trivially symmetric case).
  assert np.abs(rot_forces - forces).max() > 1e-2


def test_rotation_of_cartesian_positions():
  crystals = random_cells(1, 2)
  r = augment.ROTATIONS_90[2]  # +90 about z: x -> y
  rotated, _, _ = augment.rotate(
    crystals, np.zeros((2, 8, 3)), np.zeros((2, 3, 3)), np.stack([r, r])
  )
  cart = np.einsum("bni,bij->bnj", crystals.positions, crystals.lattice)
  new_cart = np.einsum("bni,bij->bnj", rotated.positions, rotated.lattice)
  np.testing.assert_allclose(new_cart[..., 0], -cart[..., 1], atol=1e-5)
  np.testing.assert_allclose(new_cart[..., 1], cart[..., 0], atol=1e-5)
  np.testing.assert_allclose(new_cart[..., 2], cart[..., 2], atol=1e-5)
  assert np.all(np.linalg.det(rotated.lattice) > 0)


def test_noise_has_requested_std_and_spares_padding():
  rng = np.random.default_rng(2)
  mask = np.zeros((200, 8), bool)
  mask[:, :6] = True
  crystals = Crystals(
    positions=np.where(mask[..., None], rng.uniform(size=(200, 8, 3)), 0.0),
    lattice=5.0 * (np.eye(3) + 0.1 * rng.normal(size=(200, 3, 3))),
    atomic_numbers=np.where(mask, 3, 0).astype(np.int32),
    mask=mask,
    n_atoms=np.full((200,), 6, np.int32),
  )
  where = np.zeros(200, bool)
  where[:150] = True
  std = 0.03
  noisy = augment.add_noise(np.random.default_rng(0), crystals, std=std, where=where)
  cart0 = np.einsum("bni,bij->bnj", crystals.positions, crystals.lattice)
  cart1 = np.einsum("bni,bij->bnj", noisy.positions, noisy.lattice)
  mask = crystals.mask
  d_pos = (cart1 - cart0)[:150][mask[:150]]
  d_lat = (noisy.lattice - crystals.lattice)[:150]
  assert d_pos.size == 150 * 6 * 3
  assert abs(d_pos.std() - std) < 0.05 * std
  assert abs(d_pos.mean()) < 0.1 * std
  assert abs(d_lat.std() - std) < 0.1 * std
  # Unselected structures and padding atoms are untouched.
  np.testing.assert_array_equal(noisy.positions[150:], crystals.positions[150:])
  np.testing.assert_array_equal(noisy.lattice[150:], crystals.lattice[150:])
  np.testing.assert_array_equal(noisy.positions[~mask], crystals.positions[~mask])


def test_zero_noise_is_identity_and_negative_refused():
  crystals = random_cells(3, 3)
  same = augment.add_noise(np.random.default_rng(0), crystals, std=0.0, where=np.ones(3, bool))
  np.testing.assert_array_equal(same.positions, crystals.positions)
  with pytest.raises(ValueError):
    augment.add_noise(np.random.default_rng(0), crystals, std=-0.1, where=np.ones(3, bool))


def test_fractions_exact_and_deterministic():
  plan = augment.plan_epoch(
    np.random.default_rng([7, 3]), 1000, rotate_fraction=0.5, noise_fraction=0.3
  )
  rotated = ~np.all(np.isclose(plan.rotations, np.eye(3)), axis=(1, 2))
  assert rotated.sum() == 500
  assert plan.noisy.sum() == 300
  # Independent choices: about 30 % of rotated frames are also noisy.
  assert 0.2 < plan.noisy[rotated].mean() < 0.4
  # All six rotations occur.
  kinds = {tuple(np.round(r).astype(int).ravel()) for r in plan.rotations[rotated]}
  assert len(kinds) == 6
  again = augment.plan_epoch(
    np.random.default_rng([7, 3]), 1000, rotate_fraction=0.5, noise_fraction=0.3
  )
  np.testing.assert_array_equal(plan.rotations, again.rotations)
  np.testing.assert_array_equal(plan.noisy, again.noisy)
  other = augment.plan_epoch(
    np.random.default_rng([7, 4]), 1000, rotate_fraction=0.5, noise_fraction=0.3
  )
  assert not np.array_equal(plan.noisy, other.noisy)


def test_apply_deterministic_with_seed():
  crystals = random_cells(4, 6)
  forces, stress, _ = label(crystals)
  plan = augment.plan_epoch(np.random.default_rng(1), 6, rotate_fraction=0.5, noise_fraction=0.5)

  def run(seed):
    return augment.apply(
      np.random.default_rng(seed),
      crystals,
      forces,
      stress,
      rotations=plan.rotations,
      noisy=plan.noisy,
      noise_std=0.02,
    )

  a, b, c = run(5), run(5), run(6)
  np.testing.assert_array_equal(a[0].positions, b[0].positions)
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0].positions, c[0].positions)
  # Noise leaves labels as they are (after rotation).
  np.testing.assert_array_equal(a[1], c[1])
  np.testing.assert_array_equal(a[2], c[2])
