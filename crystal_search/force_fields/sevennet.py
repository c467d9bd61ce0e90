"""SevenNet-0 (a pretrained universal potential) as a host force field: a second teacher.

The weights ship inside the ``sevenn`` wheel (``SevenNetCalculator("7net-0")`` loads offline).
SevenNet is an ASE calculator, so it runs through
:class:`~crystal_search.force_fields.ase.AseForceField`, which converts ASE's stress (eV/Å³,
tensile positive) to kBar; ``tests/test_sevennet.py`` checks the sign against finite
differences of SevenNet's own energy.  Torch runs on one thread by default, as for CHGNet.
"""

from __future__ import annotations

import functools

from crystal_search.force_fields.ase import AseForceField

__all__ = ["DEFAULT_MODEL", "sevennet", "sevennet_version"]

#: The SevenNet checkpoint in the wheel (SevenNet-0, trained on MPtrj like CHGNet).
DEFAULT_MODEL = "7net-0"


def sevennet_version() -> str:
  """Installed ``sevenn`` package version."""
  import sevenn

  return str(sevenn.__version__)


@functools.cache
def _calculator(model: str):
  import warnings

  from sevenn.calculator import SevenNetCalculator

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "no tensor product accelerator": none exists on a CPU
    return SevenNetCalculator(model, device="cpu")


def sevennet(model: str = DEFAULT_MODEL, *, num_threads: int | None = 1) -> AseForceField:
  """SevenNet's ``model`` as a host force field (energy eV, forces eV/Å, stress kBar), with
  the elements of its checkpoint; ``num_threads`` torch threads (None: torch's setting)."""
  from pymatgen.core import Element

  if num_threads is not None:
    import torch

    torch.set_num_threads(int(num_threads))
  calc = _calculator(model)
  elements = tuple(sorted(Element.from_Z(int(z)).symbol for z in calc.type_map))
  return AseForceField(
    calc, name=f"SevenNet ({model}, sevenn {sevennet_version()})", elements=elements
  )
