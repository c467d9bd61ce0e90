"""The Frames on-disk format: round trip, selection, batching, atomic writes, bad files."""

import os

import numpy as np
import pytest

from crystal_search.datasets import frames as fr
from crystal_search.errors import InputError


def _frames(n_frames=5, seed=0):
  rng = np.random.default_rng(seed)
  items = []
  for k in range(n_frames):
    n = int(rng.integers(1, 6))
    items.append(
      dict(
        numbers=rng.choice([3, 14], size=n),
        positions=rng.random((n, 3)),
        forces=rng.normal(size=(n, 3)),
        lattice=np.eye(3) * (4 + k),
        stress=rng.normal(size=(3, 3)),
        energy=-float(k),
        trajectory=k // 2,
        step=k,
      )
    )
  return fr.from_arrays(items, trajectory_names=["a", "b", "c"], metadata={"teacher": "x"})


def test_round_trip(tmp_path):
  f = _frames()
  path = str(tmp_path / "shard.npz")
  f.save(path)
  g = fr.load(path)
  for k in ("numbers", "positions", "forces", "lattice", "stress", "energy", "n_atoms", "step"):
    np.testing.assert_array_equal(getattr(f, k), getattr(g, k))
  assert g.trajectory_names == ["a", "b", "c"] and g.metadata == {"teacher": "x"}
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_select_concatenate_and_batch():
  f = _frames()
  sub = f.select([3, 1])
  assert len(sub) == 2
  np.testing.assert_array_equal(sub.forces[: sub.n_atoms[0]], f.forces[f.atom_slice(3)])
  both = fr.concatenate([f, f])
  assert len(both) == 2 * len(f)
  assert both.trajectory.max() == f.trajectory.max() + len(f.trajectory_names)
  crystals, forces, stress = f.to_batch([0, 2], batch_size=4)
  assert crystals.positions.shape[0] == 4 and crystals.max_atoms == 8
  n0 = int(f.n_atoms[0])
  np.testing.assert_allclose(forces[0, :n0], f.forces[f.atom_slice(0)], rtol=1e-6)
  assert np.all(forces[0, n0:] == 0) and np.all(forces[2:] == 0)
  np.testing.assert_allclose(stress[1], f.stress[2], rtol=1e-6)
  s = f.structure(4)
  assert len(s) == f.n_atoms[4]


def test_bad_files(tmp_path):
  with pytest.raises(InputError, match="no such file"):
    fr.load(str(tmp_path / "missing.npz"))
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(InputError, match="cannot read frames"):
    fr.load(str(bad))
  foreign = tmp_path / "foreign.npz"
  np.savez(foreign, x=np.zeros(3))
  with pytest.raises(InputError, match="not a crystal-search frames file"):
    fr.load(str(foreign))
