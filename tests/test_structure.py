"""Mechanical checks of the repository itself: file sizes, the import graph, words.

Pure Python over the files git tracks (no jax): each check names the files and lines that
break it. Skipped where the tree is not a git checkout (e.g. an installed sdist).
"""
from __future__ import annotations

import ast
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("jaxgen", "experiments")
MAX_PY_LINES = 500
MAX_DOC_LINES = 400
MAX_README_LINES = 160
DOC_SUFFIXES = (".md", ".rst", ".txt")


def _tracked() -> list[str]:
  """Paths (relative, '/'-separated) that git tracks and that exist in the working tree."""
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  paths = [p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
  return sorted(p for p in paths if (ROOT / p).is_file())


def _text(path: str) -> str | None:
  """The file's text, or None for a binary file (one with a NUL byte)."""
  data = (ROOT / path).read_bytes()
  if b"\0" in data:
    return None
  return data.decode("utf-8", errors="replace")


def _line_count(path: str) -> int:
  return len((ROOT / path).read_text(encoding="utf-8", errors="replace").splitlines())


def _too_long(paths, limit: int) -> list[str]:
  return [f"{p}: {n} lines (limit {limit})" for p in paths if (n := _line_count(p)) > limit]


def test_python_files_at_most_500_lines():
  paths = [p for p in _tracked() if p.endswith(".py") and p.split("/")[0] in PACKAGES]
  bad = _too_long(paths, MAX_PY_LINES)
  assert not bad, "split these modules:\n" + "\n".join(bad)


def test_docs_pages_and_readme_length():
  tracked = _tracked()
  docs = [p for p in tracked if p.startswith("docs/") and p.endswith(DOC_SUFFIXES)]
  bad = _too_long(docs, MAX_DOC_LINES)
  if "README.md" in tracked:
    bad += _too_long(["README.md"], MAX_README_LINES)
  assert not bad, "shorten these pages:\n" + "\n".join(bad)


# --- import graph ---------------------------------------------------------------------------

def _module_name(path: str) -> str:
  """jaxgen/nn/layers.py -> jaxgen.nn.layers; jaxgen/nn/__init__.py -> jaxgen.nn."""
  parts = path[:-len(".py")].split("/")
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imports(tree: ast.AST, name: str, is_package: bool):
  """(line, dotted target, imported names or None) for every import statement in the module,
  at any depth (imports inside functions count); relative imports made absolute."""
  package = name if is_package else name.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name, None
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - (node.level - 1)] if node.level > 1 else anchor
        base = ".".join(anchor + ([base] if base else []))
      yield node.lineno, base, [alias.name for alias in node.names]


def _resolve(target: str, modules: set[str]) -> str | None:
  """The project module a dotted name refers to: the longest prefix that is one."""
  parts = target.split(".")
  for i in range(len(parts), 0, -1):
    candidate = ".".join(parts[:i])
    if candidate in modules:
      return candidate
  return None


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, str]]:
  """module -> {imported project module: line of the first such import}, and module -> path.

  `import a.b.c` is an edge to a.b.c; `from a.b import z` to a.b.z when that is a module,
  else to a.b. The packages above the target (whose `__init__` Python also runs) are not
  edges: otherwise every submodule importing a sibling would close a loop with its package's
  `__init__`. A module importing itself is not an edge either.
  """
  paths = {_module_name(p): p for p in _tracked()
           if p.endswith(".py") and p.split("/")[0] in PACKAGES}
  modules = set(paths)
  graph: dict[str, dict[str, int]] = {}
  for name, path in paths.items():
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    edges: dict[str, int] = {}
    for line, target, names in _imports(tree, name, path.endswith("__init__.py")):
      found = []
      for imported in names or [None]:
        sub = f"{target}.{imported}" if imported and imported != "*" else None
        found.append(sub if sub in modules else _resolve(target, modules))
      for dest in found:
        if dest is not None and dest != name:
          edges.setdefault(dest, line)
    graph[name] = edges
  return graph, paths


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
  """Tarjan's strongly connected components with more than one module (iterative)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  components = []
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in graph:
          continue
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph[child]))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        parent = work[-1][0]
        low[parent] = min(low[parent], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(sorted(component))
  return sorted(components)


def _cycle_in(component: list[str], graph) -> list[str]:
  """One cycle through the first module of a strongly connected component (BFS back to it)."""
  members = set(component)
  start = component[0]
  previous = {start: None}
  queue = [start]
  while queue:
    node = queue.pop(0)
    for child in sorted(graph[node]):
      if child == start:
        path = [node]
        while previous[path[-1]] is not None:
          path.append(previous[path[-1]])
        return path[::-1] + [start]
      if child in members and child not in previous:
        previous[child] = node
        queue.append(child)
  raise AssertionError(f"no cycle through {start} in {component}")


def test_strongly_connected_finds_a_cycle():
  graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1}}
  assert strongly_connected(graph) == [["a", "b", "c"]]
  assert _cycle_in(["a", "b", "c"], graph) == ["a", "b", "c", "a"]


def test_no_import_cycles():
  graph, paths = import_graph()
  assert graph, "no project modules found"
  report = []
  for component in strongly_connected(graph):
    cycle = _cycle_in(component, graph)
    steps = [f"  {a} ({paths[a]}:{graph[a][b]}) imports {b}" for a, b in zip(cycle, cycle[1:])]
    report.append(f"cycle among {len(component)} modules {component}; one loop:\n"
                  + "\n".join(steps))
  assert not report, "import cycles:\n" + "\n".join(report)


# --- words ----------------------------------------------------------------------------------

# Built from pieces so that this file does not match its own patterns.
_S_WORD = "ses" + "sion"
_FIXTURE_SCOPE = re.compile(r"""scope\s*=\s*(["'])""" + _S_WORD + r"\1")
_FORBIDDEN = re.compile(
    "|".join([
        r"(?<![a-z])" + _S_WORD + r"s?(?![a-z])",
        r"(?<![a-z])" + "iss" + r"ues?\s*#\s*\d+",
        r"(?<![a-z])" + "iss" + r"ues?\s+\d+",
        "regis" + "tration",
        "regis" + "tered",
        "pre" + "regist",
    ]),
    re.IGNORECASE)


def forbidden_words(text: str) -> list[tuple[int, str]]:
  """(line number, matched text) of each forbidden word; pytest fixture scopes are allowed."""
  found = []
  for number, line in enumerate(text.splitlines(), 1):
    line = _FIXTURE_SCOPE.sub("", line)
    found += [(number, m.group(0)) for m in _FORBIDDEN.finditer(line)]
  return found


def test_forbidden_words_patterns():
  word = _S_WORD
  assert forbidden_words(f'@pytest.fixture(scope="{word}")\n') == []
  assert forbidden_words(f"scope='{word}'") == []
  assert [w.lower() for _, w in forbidden_words(f"a {word.upper()}S b\nc_{word}_dir")] == [
      word + "s", word]
  assert [n for n, _ in forbidden_words("x\nsee " + "iss" + "ue #12\n" + "iss" + "ue 7")] == [2, 3]
  assert len(forbidden_words("un" + "regis" + "tered, " + "pre" + "regis" + "tration")) == 2
  assert forbidden_words("possession, tissue 3, register_pytree_node, issued") == []


def test_no_forbidden_words_in_tracked_files():
  bad = []
  for path in _tracked():
    text = _text(path)
    if text is None:
      continue
    bad += [f"{path}:{number}: {word!r}" for number, word in forbidden_words(text)]
  assert not bad, "reword these lines:\n" + "\n".join(bad)
