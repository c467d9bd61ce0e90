"""Composition strings: parsing, validation and formula-unit counts.

``parse_composition('Li15Si4')`` returns the reduced pymatgen
:class:`~pymatgen.core.Composition` of an integer formula, or raises a one-line
:class:`~crystal_search.errors.InputError` for anything malformed (unknown
element, zero/negative/fractional amount, empty string, unsupported element).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pymatgen.core import Composition, Element

from crystal_search.errors import InputError

_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_composition(
  text: str,
  *,
  allowed_elements: Iterable[str] | None = None,
) -> Composition:
  """Parse an integer chemical formula such as ``'Li15Si4'``.

  Args:
    text: formula of element symbols each followed by an optional positive
      integer count (no spaces, brackets, fractions or signs).
    allowed_elements: element symbols the caller supports; None for any.

  Returns:
    The pymatgen Composition of ``text`` (not reduced: ``'Li2Si2'`` keeps 4 atoms;
    use :func:`reduced` for the formula unit).

  Raises:
    InputError: one line naming the string and the problem.
  """
  if not isinstance(text, str) or not text.strip():
    raise InputError("composition: empty string, expected a formula such as 'Li15Si4'")
  s = text.strip()
  pos = 0
  amounts: dict[str, int] = {}
  for match in _TOKEN.finditer(s):
    if match.start() != pos:
      break
    symbol, count = match.group(1), match.group(2)
    if not Element.is_valid_symbol(symbol):
      raise InputError(f"composition {text!r}: unknown element {symbol!r}")
    n = int(count) if count else 1
    if n <= 0:
      raise InputError(f"composition {text!r}: element {symbol} has a zero amount")
    amounts[symbol] = amounts.get(symbol, 0) + n
    pos = match.end()
  if pos != len(s) or not amounts:
    bad = s[pos:] or s
    raise InputError(
      f"composition {text!r}: cannot parse {bad!r} (expected element symbols with positive "
      "integer counts, e.g. 'Li15Si4')"
    )
  if allowed_elements is not None:
    allowed = set(allowed_elements)
    unknown = sorted(set(amounts) - allowed)
    if unknown:
      raise InputError(
        f"composition {text!r}: element(s) {', '.join(unknown)} not supported "
        f"(supported: {', '.join(sorted(allowed))})"
      )
  return Composition(amounts)


def reduced(composition: Composition) -> Composition:
  """The formula unit (smallest integer formula) of a composition."""
  return composition.reduced_composition


def formula_name(composition: Composition) -> str:
  """Canonical file-system-safe name of the formula unit, e.g. ``'Li15Si4'``."""
  return reduced(composition).reduced_formula


def formula_units(composition: Composition, max_atoms: int) -> list[int]:
  """All formula-unit multiples ``z`` with ``z * atoms_per_formula_unit <= max_atoms``.

  Raises:
    InputError: when even one formula unit exceeds ``max_atoms``.
  """
  unit = reduced(composition)
  n = int(round(unit.num_atoms))
  zs = list(range(1, max_atoms // n + 1))
  if not zs:
    raise InputError(
      f"composition {formula_name(composition)}: one formula unit has {n} atoms, "
      f"more than max_atoms={max_atoms}"
    )
  return zs
