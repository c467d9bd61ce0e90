"""A tiny teacher run with the analytic Morse potential (tests and dry runs, seconds)."""

import ml_collections

from data_tools.configs import default_teacher


def get_config() -> ml_collections.ConfigDict:
  c = default_teacher.get_config()
  c.compositions = "LiSi,Li2Si"
  c.num_per_composition = 3
  c.seed = 7
  c.output_dir = "/tmp/crystal_search_test_teacher"
  c.random.max_atoms = 8
  c.relax.max_steps = 40
  c.teacher.name = "morse"
  return c
