"""The core must run without Prefect or MLflow (notebooks, other orchestrators)."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "reid_models"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_prefect_or_mlflow():
    files = list(CORE.rglob("*.py"))
    assert len(files) > 5
    offenders = {str(p.relative_to(CORE)): imported_modules(p) & {"prefect", "mlflow"} for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_tracking_module_imports_mlflow():
    root = CORE.parent
    users = [p.relative_to(root).as_posix() for folder in ("tasks", "flows") for p in (root / folder).rglob("*.py")
             if "mlflow" in imported_modules(p)]
    assert users == ["tasks/tracking.py"]


PACKAGES = ("reid_models", "tasks", "flows")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, anywhere in the file (inside functions too: an
    import moved into a function hides a cycle from Python, not from this graph)."""
    files = {module_name(p): p for package in PACKAGES for p in (CORE.parent / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for candidate in candidates:
                if candidate in files:  # `from reid_models import stats` names a module; else the module imported from
                    targets.add(candidate)
                    if candidate.rsplit(".", 1)[0] == getattr(node, "module", None):
                        break
        targets.discard(name)
        graph[name] = {t for t in targets if not name.startswith(t + ".") and t not in PACKAGES}  # not its own package
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_rooms_import_one_way_without_a_circle():
    graph = import_graph()
    assert len(graph) > 30 and "reid_models.shipping" in graph["tasks.scenarios"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    upward = {(a, b) for a, targets in graph.items() for b in targets
              if PACKAGES.index(a.split(".")[0]) < PACKAGES.index(b.split(".")[0])}
    assert upward == set(), upward  # the core never imports tasks or flows; tasks never import flows
    # The check can fail: the circle issue 34 broke (stages -> prune -> latency -> export -> stages).
    assert find_cycle({**graph, "reid_models.export": graph["reid_models.export"] | {"reid_models.stages"}})
