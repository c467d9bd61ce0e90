"""Stress-head comparison (paper appendix 7.4, Table 5): plane, corner or global stress output.

  crystal-search train --config=experiments/configs/stress_heads.py:corner --workdir=runs/corner
  crystal-search train --config=experiments/configs/stress_heads.py:global,paper --workdir=...
  crystal-search train --config=experiments/configs/stress_heads.py:plane,edge --workdir=...

* ``plane``: fictitious atoms on the (100), (010), (001) planes (the paper's choice);
* ``corner``: fictitious atoms on the cell corners;
* ``global``: the six stress components from the set2set-pooled graph;
* ``virial`` (ours): bond-sum virial head with the bond-sum force head on smooth
  distance-only edges (the CPU default).

The paper's three heads run on the paper's trunk (node force head, ``(r, |r|, |r|^2)`` edge
inputs) at either scale, so the rows differ only in the stress head.  A second part ``edge``
(``HEAD,edge``) swaps in our bond-sum force head (:data:`FORCE_HEADS`) and keeps the vector edge
inputs the paper's stress heads need to see directions: the same comparison of stress heads on a
force head that trains at CPU scale (the node head stays near the zero predictor there).
"""

import ml_collections

from experiments.configs import default

HEADS = ("plane", "corner", "global", "virial")
#: Force heads for the paper's stress heads: the paper's per-atom ``node`` head or our ``edge`` one.
FORCE_HEADS = ("node", "edge")
#: Suffix of the results-table rows whose stress head sits beside our edge force head
#: (``experiments/reproduce.py`` names the rows; ``experiments/make_tables.py`` compares every
#: ``GNN stress=HEAD (...)`` row with the paper's ``HEAD`` row).
EDGE_ROW_SUFFIX = " (edge forces)"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts, scale = default.parse_arg(arg)
  if len(parts) > 2:
    raise ValueError(f"stress_heads.py takes 'HEAD[,FORCE_HEAD][,cpu|paper]', got {arg!r}")
  head = parts[0] if parts else "plane"
  if head not in HEADS:
    raise ValueError(f"stress head {head!r}: expected one of {HEADS}")
  force_head = parts[1] if len(parts) > 1 else ("edge" if head == "virial" else "node")
  if force_head not in FORCE_HEADS:
    raise ValueError(f"force head {force_head!r}: expected one of {FORCE_HEADS}")
  if head == "virial" and force_head != "edge":
    raise ValueError("stress head 'virial' comes with the 'edge' force head only")
  c = default.base_config(scale)
  c.model.stress_head = head
  if head == "virial":
    c.model.force_head, c.model.edge_inputs = "edge", "rbf"
  else:
    c.model.force_head, c.model.edge_inputs = force_head, "vector"
  return c
