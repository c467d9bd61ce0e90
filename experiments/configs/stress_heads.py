"""Stress-head comparison (paper appendix 7.4, Table 5): plane, corner or global stress output.

  crystal-search train --config=experiments/configs/stress_heads.py:corner --workdir=runs/corner
  crystal-search train --config=experiments/configs/stress_heads.py:global,paper --workdir=...

* ``plane``: fictitious atoms on the (100), (010), (001) planes (the paper's choice);
* ``corner``: fictitious atoms on the cell corners;
* ``global``: the six stress components from the set2set-pooled graph;
* ``virial`` (ours): bond-sum virial head with the bond-sum force head on smooth
  distance-only edges (the CPU default).

The paper's three heads run on the paper's trunk (node force head, ``(r, |r|, |r|^2)`` edge
inputs) at either scale, so the rows differ only in the stress head.
"""

import ml_collections

from experiments.configs import default

HEADS = ("plane", "corner", "global", "virial")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts, scale = default.parse_arg(arg)
  if len(parts) > 1:
    raise ValueError(f"stress_heads.py takes 'HEAD[,cpu|paper]', got {arg!r}")
  head = parts[0] if parts else "plane"
  if head not in HEADS:
    raise ValueError(f"stress head {head!r}: expected one of {HEADS}")
  c = default.base_config(scale)
  c.model.stress_head = head
  if head == "virial":
    c.model.force_head, c.model.edge_inputs = "edge", "rbf"
  else:
    c.model.force_head, c.model.edge_inputs = "node", "vector"
  return c
