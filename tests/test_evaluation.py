"""The paper's evaluation metrics over a force field: a teacher scored against itself is perfect."""

import numpy as np
import pytest

from crystal_search import compositions, evaluation, random_structures, relax
from crystal_search.datasets import frames as frames_lib
from crystal_search.force_fields.analytic import morse


def _teacher():
  return morse(sigma=2.6, epsilon=0.3, alpha=1.4, elements=("Li", "Si"))


@pytest.fixture(scope="module")
def teacher_trajectories():
  structures = random_structures.generate(
    compositions.parse_composition("LiSi"), 4, seed=3, max_atoms=8
  )
  results = relax.relax_structures(
    structures, _teacher(), trajectory_every=1, max_steps=20, fmax=1e-9, smax=1e-9
  )
  items = []
  for t, r in enumerate(results):
    tr = r.trajectory
    numbers = np.asarray(r.final.atomic_numbers)
    for k in range(len(tr["positions"])):
      items.append(
        dict(
          numbers=numbers,
          positions=tr["positions"][k],
          forces=tr["forces"][k],
          lattice=tr["lattice"][k],
          stress=tr["stress"][k],
          energy=tr["energy"][k],
          trajectory=t,
          step=k,
        )
      )
  return frames_lib.from_arrays(items, trajectory_names=[f"t{k}" for k in range(len(results))])


def test_teacher_scores_perfectly_against_itself(teacher_trajectories):
  errors = evaluation.frame_errors(_teacher(), teacher_trajectories)
  assert errors["force_mae"] < 1e-4 and errors["stress_mae"] < 1e-2
  scores = evaluation.trajectory_scores(_teacher(), teacher_trajectories)
  assert scores["trajectories"] == 4
  assert scores["relaxed_match"] == 1.0 and scores["trajectory_match"] == 1.0
  assert scores["matched_by_step"] == [1.0] * 21  # 20 steps + the start


def test_a_different_potential_scores_worse(teacher_trajectories):
  other = morse(sigma=3.1, epsilon=0.3, alpha=1.4, elements=("Li", "Si"))
  errors = evaluation.frame_errors(other, teacher_trajectories)
  assert errors["force_mae"] > 0.01
  scores = evaluation.trajectory_scores(other, teacher_trajectories)
  assert scores["trajectory_match"] < 1.0
  by_step = scores["matched_by_step"]
  assert by_step[0] == 1.0  # both start from the teacher's first frame
  assert min(by_step) < 1.0


def test_experimental_recovery_counts_teacher_hits(teacher_trajectories):
  last = teacher_trajectories.structure(
    int(evaluation.split_trajectories(teacher_trajectories)[0][-1])
  )
  found = evaluation.experimental_recovery(_teacher(), teacher_trajectories, last)
  assert found["experimental_in_teacher"] >= 1
  assert found["experimental_found"] == found["experimental_in_teacher"]


def test_summarize_seeds():
  s = evaluation.summarize_seeds([0.1, 0.3])
  assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1) and s["n"] == 2


def test_matched_by_step_counts_only_trajectories_still_running():
  per = [np.array([True, True, False]), np.array([True, False]), np.array([True])]
  assert evaluation.matched_by_step(per) == [1.0, 0.5, 0.0]
  assert evaluation.matched_by_step([]) == []


def test_figures_parity_matched_by_step_and_noise_sweep(teacher_trajectories, tmp_path):
  """The evaluation figures are written (and the sweep plot needs two noise values)."""
  from crystal_search import plots

  errors = evaluation.frame_errors(_teacher(), teacher_trajectories)
  pred = errors["predictions"]
  path = tmp_path / "parity.png"
  plots.parity(
    teacher_trajectories.forces, pred["forces"], teacher_trajectories.stress, pred["stress"], path
  )
  assert path.stat().st_size > 5000
  curves = {"test": [1.0, 0.5, 0.25]}
  plots.matched_by_step(curves, tmp_path / "steps.png")
  assert (tmp_path / "steps.png").stat().st_size > 3000
  rows = {
    f"GNN noise={n}": {
      k: {"mean": v, "std": 0.01}
      for k, v in dict(
        force_mae=0.05, stress_mae=2.0, relaxed_match=0.5, trajectory_match=0.7
      ).items()
    }
    for n in (0, 0.01)
  }
  assert plots.noise_sweep(rows, tmp_path / "noise.png")
  assert not plots.noise_sweep({"MEAM": rows["GNN noise=0"]}, tmp_path / "none.png")
  assert not (tmp_path / "none.png").exists()


def test_equation_of_state_of_a_pair_potential():
  # Lennard-Jones fcc near its minimum: the pressure falls as the volume grows, vanishes between
  # the scales where it changes sign, and the fitted bulk modulus agrees with a central difference.
  from pymatgen.core import Lattice, Structure

  ff = relax.make_force_field("lj")
  sites = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
  fcc = Structure(Lattice.cubic(3.08), ["Li"] * 4, sites)
  eos = evaluation.equation_of_state(ff, fcc, scales=(0.92, 0.96, 1.0, 1.04, 1.08))
  p = np.asarray(eos["pressure_kbar"])
  assert np.all(np.diff(p) < 0)
  assert p[2] > 0 > p[3] and 1.0 < eos["zero_pressure_scale"] < 1.04
  central = -(p[3] - p[1]) / (np.log(1.04) - np.log(0.96)) / 10.0  # GPa
  assert eos["bulk_modulus_gpa"] == pytest.approx(central, rel=0.1)
  assert evaluation.pressures(ff, [fcc])[0] == pytest.approx(p[2], rel=1e-5)
