"""The import graph of ``crystal_search``: no cycles between its modules.

Every ``import`` statement of every module counts, at module level or inside a function
(a lazy import still ties the two modules together).  A package's ``__init__`` counts as the
package; a module importing a package imports its ``__init__``.
"""

from __future__ import annotations

import ast
import os

import crystal_search

ROOT = os.path.dirname(os.path.abspath(crystal_search.__file__))


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph() -> dict[str, set[str]]:
  """``{module: {imported crystal_search modules}}`` from the source files."""
  modules = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        modules[_module_name(path)] = path
  graph = {}
  for name, path in modules.items():
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(open(path).read())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        targets = [base] + [f"{base}.{a.name}" for a in node.names]
      for t in targets:
        while t and t not in modules:
          t = t.rpartition(".")[0]
        if t and t != name:
          deps.add(t)
    graph[name] = deps
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle ``[a, b, ..., a]`` of ``graph``, or None."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m) :] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_no_import_cycles():
  graph = import_graph()
  # A package __init__ importing its own submodules (re-exports) is the package's public face;
  # the submodules must not import the package back, which the search below catches.
  for name in graph:
    graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
