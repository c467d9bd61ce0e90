"""CHGNet (pretrained universal potential) as a host force field: the project's teacher.

CHGNet runs in PyTorch on the host; :class:`CHGNetForceField` takes a numpy
:class:`~crystal_search.crystals.Crystals` batch and returns a
:class:`~crystal_search.force_fields.base.ForceFieldOutput` of numpy arrays
(energy eV per cell, forces eV/Å, stress kBar with the project's tensile-positive
sign).  CHGNet's ``predict_structure`` gives energy per atom (eV), forces (eV/Å)
and stress in GPa with the tensile-positive sign — the sign is checked against
finite differences of CHGNet's own energy in ``tests/test_chgnet.py`` — and the
stress is converted with :func:`crystal_search.units.stress_from_gpa`.

The weights ship inside the ``chgnet`` wheel (``CHGNet.load()`` works offline).
By default torch uses one thread (the machine is shared).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from crystal_search.crystals import Crystals, to_structures
from crystal_search.force_fields.base import ForceFieldOutput
from crystal_search.units import stress_from_gpa


@functools.cache
def _load_model(model_name: str):
  from chgnet.model import CHGNet

  return CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)


def chgnet_version() -> str:
  """Installed ``chgnet`` package version."""
  import chgnet

  return str(chgnet.__version__)


@dataclasses.dataclass
class CHGNetForceField:
  """The pretrained CHGNet model as a host :class:`~crystal_search.force_fields.base.ForceField`.

  Attributes:
    model_name: CHGNet weights version (``'0.3.0'`` ships in the wheel).
    batch_size: structures per CHGNet batch.
    num_threads: torch intra-op threads (None leaves torch's setting alone).
  """

  model_name: str = "0.3.0"
  batch_size: int = 16
  num_threads: int | None = 1
  jittable: bool = dataclasses.field(default=False, init=False)
  elements: tuple[str, ...] | None = dataclasses.field(default=None, init=False)

  def __post_init__(self):
    if self.num_threads is not None:
      import torch

      torch.set_num_threads(int(self.num_threads))
    self.model = _load_model(self.model_name)

  @property
  def name(self) -> str:
    return f"CHGNet-{self.model_name}"

  def version_info(self) -> dict:
    """Teacher name, weights and package versions (for metadata)."""
    import torch

    return {
      "teacher": self.name,
      "chgnet": chgnet_version(),
      "torch": str(torch.__version__),
      "model_name": self.model_name,
      "parameters": int(sum(p.numel() for p in self.model.parameters())),
    }

  def _predict(self, structures: list) -> list[dict]:
    try:
      out = self.model.predict_structure(structures, task="efs", batch_size=self.batch_size)
      return out if isinstance(out, list) else [out]
    except Exception:  # noqa: BLE001 - one bad structure (e.g. isolated atom) fails the batch.
      results = []
      for s in structures:
        try:
          results.append(self.model.predict_structure(s, task="efs"))
        except Exception:  # noqa: BLE001 - reported as NaN output, the caller marks it failed.
          results.append(None)
      return results

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    """Energy ``[B]`` eV, forces ``[B, N, 3]`` eV/Å, stress ``[B, 3, 3]`` kBar (numpy).

    Padding structures get zeros and NaN energy; a structure CHGNet cannot
    evaluate gets NaN everywhere.
    """
    n_atoms = np.asarray(crystals.n_atoms)
    b, n = np.asarray(crystals.positions).shape[:2]
    forces = np.zeros((b, n, 3), np.float64)
    stress = np.zeros((b, 3, 3), np.float64)
    energy = np.full((b,), np.nan, np.float64)
    real = [k for k in range(b) if n_atoms[k] > 0]
    structures = to_structures(crystals)
    predictions = self._predict(structures) if structures else []
    for k, pred in zip(real, predictions):
      m = int(n_atoms[k])
      if pred is None:
        forces[k, :m] = np.nan
        stress[k] = np.nan
        continue
      energy[k] = float(np.asarray(pred["e"]).reshape(())) * m
      forces[k, :m] = np.asarray(pred["f"], np.float64).reshape(m, 3)
      stress[k] = stress_from_gpa(np.asarray(pred["s"], np.float64).reshape(3, 3))
    return ForceFieldOutput(
      forces=forces, stress=stress, energy=energy, overflow=np.zeros((b,), bool)
    )

  def grow(self) -> CHGNetForceField:
    """CHGNet builds its own neighbour lists: nothing to grow."""
    return self

  def ase_calculator(self):
    """CHGNet's own ASE calculator sharing this model (ASE units and sign)."""
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(model=self.model, use_device="cpu")
