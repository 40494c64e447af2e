"""No import circle inside camgap/zoo/, read from the modules' own import statements (those inside
functions too: a lazy import hides a circle from the interpreter, not from a reader)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "camgap" / "zoo"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The camgap.zoo modules that ``path`` imports (``from camgap.zoo import files`` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def _graph() -> dict[str, set[str]]:
    paths = {f"camgap.zoo.{p.stem}": p for p in ZOO.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(p, set(paths)) - {name} for name, p in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (as a path that comes back to its start), None when there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_and_its_absence():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_inside_zoo():
    graph = _graph()
    assert {"camgap.zoo.files", "camgap.zoo.loop", "camgap.zoo.train"} <= set(graph)
    assert "camgap.zoo.loop" in graph["camgap.zoo.packed"]  # the graph sees what a module imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
