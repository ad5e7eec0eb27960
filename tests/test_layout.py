"""The package's shape, computed from its source: no import circles, no module past 350 lines, and
the data package importing only downward (no function-level imports but of optional libraries)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "omnivec"
MAX_LINES = 350
LAZY_LIBRARIES = {"datasets", "fsspec"}  # heavy or optional: imported where a function needs them


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, tree: ast.Module | None = None) -> list[tuple[ast.AST, str, list[str]]]:
    """(node, the module an import statement names, its names) for every import in `path` (parsed
    as `tree`), any depth."""
    tree = tree or ast.parse(path.read_text())
    package = module_name(path).split(".")[: None if path.name == "__init__.py" else -1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node, module, [alias.name for alias in node.names]))
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the omnivec modules it imports} (a name imported from a package that is one of its
    modules counts as that module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for _, module, names in imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            if not targets and module in modules:
                targets = [module]
            graph[name].update(t for t in targets if t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as the list of modules along it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 200  # the graph was read
    assert find_cycle(graph) is None


def test_no_module_over_350_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_data_package_imports_only_at_module_level():
    lazy = []
    for path in (PACKAGE / "datasets").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node, module, _ in imports(path, tree):
            if node not in tree.body and module.split(".")[0] not in LAZY_LIBRARIES:
                lazy.append(f"{path.name}:{node.lineno} {module}")
    assert lazy == []
