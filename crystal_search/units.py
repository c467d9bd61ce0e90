"""Units and the one stress sign convention of crystal-search.

Every quantity inside the library uses:

* length: Å; lattice matrices hold the three lattice vectors as **rows**
  (``cart = frac @ lattice``), as in pymatgen and ASE;
* energy: eV (total energy of the cell unless a name says ``per_atom``);
* force: eV/Å;
* stress: **kBar**, the paper's unit, with the **physics / ASE sign**:
  ``stress = (1 / V) dE/d(strain)``, so a *positive* diagonal component is
  *tensile* (the cell wants to shrink) and a negative one compressive (the cell
  wants to grow).  Pressure is ``-trace(stress) / 3``.

VASP prints and stores stress with the opposite sign (positive = compressive,
``vasprun.xml``/``OUTCAR`` "in kB"), and the paper's published JSON follows
VASP.  ASE uses eV/Å^3, CHGNet returns GPa, LAMMPS ``metal`` units give bar
with the pressure sign.  Every reader and writer converts at the boundary with
the functions below; nothing else in the code base flips a sign.
"""

from __future__ import annotations

import numpy as np

#: 1 eV/Å^3 in kBar (1 eV/Å^3 = 160.21766208 GPa = 1602.1766208 kBar).
EV_PER_A3_TO_KBAR = 1602.1766208
#: 1 GPa in kBar.
GPA_TO_KBAR = 10.0
#: 1 bar in kBar.
BAR_TO_KBAR = 1e-3

_VOIGT_ORDER = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def voigt_to_matrix(voigt: np.ndarray) -> np.ndarray:
  """Voigt ``[..., 6]`` (xx, yy, zz, yz, xz, xy) to a symmetric ``[..., 3, 3]``."""
  voigt = np.asarray(voigt)
  xx, yy, zz, yz, xz, xy = (voigt[..., k] for k in range(6))
  return np.stack(
    [
      np.stack([xx, xy, xz], axis=-1),
      np.stack([xy, yy, yz], axis=-1),
      np.stack([xz, yz, zz], axis=-1),
    ],
    axis=-2,
  )


def matrix_to_voigt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric ``[..., 3, 3]`` to Voigt ``[..., 6]`` (xx, yy, zz, yz, xz, xy)."""
  matrix = np.asarray(matrix)
  return np.stack([matrix[..., i, j] for i, j in _VOIGT_ORDER], axis=-1)


def _as_matrix(stress: np.ndarray) -> np.ndarray:
  stress = np.asarray(stress, dtype=np.float64)
  if stress.shape[-1] == 6:
    return voigt_to_matrix(stress)
  if stress.shape[-2:] != (3, 3):
    raise ValueError(f"stress must be [..., 6] Voigt or [..., 3, 3], got shape {stress.shape}")
  return stress


def stress_from_ase(stress_ev_per_a3: np.ndarray) -> np.ndarray:
  """ASE stress (eV/Å^3, tensile positive; Voigt or 3x3) -> project stress (kBar, 3x3)."""
  return _as_matrix(stress_ev_per_a3) * EV_PER_A3_TO_KBAR


def stress_to_ase(stress_kbar: np.ndarray, *, voigt: bool = True) -> np.ndarray:
  """Project stress (kBar, 3x3) -> ASE stress (eV/Å^3; Voigt by default)."""
  matrix = _as_matrix(stress_kbar) / EV_PER_A3_TO_KBAR
  return matrix_to_voigt(matrix) if voigt else matrix


def stress_from_vasp(stress_kbar_vasp: np.ndarray) -> np.ndarray:
  """VASP stress (kBar, positive = compressive) -> project stress (kBar)."""
  return -_as_matrix(stress_kbar_vasp)


def stress_to_vasp(stress_kbar: np.ndarray) -> np.ndarray:
  """Project stress (kBar) -> VASP stress (kBar, positive = compressive)."""
  return -_as_matrix(stress_kbar)


def stress_from_gpa(stress_gpa: np.ndarray) -> np.ndarray:
  """Stress in GPa with the tensile-positive sign (CHGNet's) -> project stress (kBar)."""
  return _as_matrix(stress_gpa) * GPA_TO_KBAR


def stress_from_lammps_pressure(pressure_tensor_bar: np.ndarray) -> np.ndarray:
  """LAMMPS ``metal`` pressure tensor (bar, positive = compressive) -> project stress (kBar)."""
  return -_as_matrix(pressure_tensor_bar) * BAR_TO_KBAR
