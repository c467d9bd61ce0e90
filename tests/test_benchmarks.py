"""The benchmark scripts end bad input in one line, not a traceback (``benchmarks/_common.run``)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "script, flag",
  [
    ("equation_of_state.py", "--models=x=/nonexistent/model"),
    ("relax_throughput.py", "--model=/nonexistent/model"),
  ],
)
def test_missing_model_directory_is_one_line(script, flag, tmp_path):
  out = str(tmp_path / "report.json")
  done = subprocess.run(
    [sys.executable, os.path.join(ROOT, "benchmarks", script), flag, f"--out={out}"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )
  assert done.returncode == 1
  lines = [x for x in done.stderr.splitlines() if x.strip() and "Warning" not in x]
  assert len(lines) == 1 and lines[0].startswith("error: ") and "/nonexistent/model" in lines[0]
  assert "Traceback" not in done.stderr and not os.path.exists(out)
