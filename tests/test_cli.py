"""The ``crystal-search`` dispatcher: ``--version`` and the one version string."""

import re
import subprocess
import sys
from pathlib import Path

import crystal_search

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag_prints_package_version():
  out = subprocess.run(
    [sys.executable, "-m", "experiments.cli", "--version"],
    capture_output=True,
    text=True,
    check=False,
    cwd=ROOT,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == f"crystal-search {crystal_search.__version__}"


def test_setup_reads_version_from_package():
  setup_text = (ROOT / "setup.py").read_text()
  assert not re.search(r'version="\d', setup_text), "setup.py must not repeat the version"
  assert 'crystal_search" / "__init__.py' in setup_text
