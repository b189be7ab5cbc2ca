"""Print the requirements of the set-up's first half: pyproject.toml's pins of the packages named in
`[tool.reid-prune] first-install` (what the speed probe and the run's estimate import).

`make run` installs these, prints the probe and the estimate, then installs the rest (Prefect,
MLflow, DVC, ONNX), so a fresh machine says how long the run will take within its first 2 minutes.
Standard library only: it runs before the virtual environment has anything in it.
"""

import re
import sys
import tomllib
from pathlib import Path


def first_requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())
    wanted = project["tool"]["reid-prune"]["first-install"]
    pins = {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower(): requirement
            for requirement in project["project"]["dependencies"]}
    if missing := [name for name in wanted if name.lower() not in pins]:
        sys.exit(f"{pyproject}: [tool.reid-prune] first-install names {missing}, which are not in "
                 f"[project] dependencies; add them there or remove them from first-install")
    return [pins[name.lower()] for name in wanted]


if __name__ == "__main__":
    # unquoted: `$(...)` splits on spaces and does not parse ">=" as a redirection
    print(" ".join(first_requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
