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
