"""crystal-search: crystal structure search with random relaxations using graph networks.

Conventions (see :mod:`crystal_search.units`): Å, eV, eV/Å, stress in kBar with
the tensile-positive sign ``(1/V) dE/dstrain``; lattice vectors as rows;
positions fractional inside :class:`Crystals`.
"""

from crystal_search.crystals import (
  ATOM_BUCKETS,
  Crystals,
  bucket_size,
  from_atoms,
  from_structures,
  read_structures,
  to_atoms,
  to_structures,
)
from crystal_search.errors import InputError
from crystal_search.force_fields.base import EnergyForceField, ForceField, ForceFieldOutput

__version__ = "0.1.0"

__all__ = [
  "ATOM_BUCKETS",
  "Crystals",
  "EnergyForceField",
  "ForceField",
  "ForceFieldOutput",
  "InputError",
  "bucket_size",
  "from_atoms",
  "from_structures",
  "read_structures",
  "to_atoms",
  "to_structures",
]
