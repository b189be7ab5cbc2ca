"""The `prune-adapt` deployments, served by this process (what `make serve` starts).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve

Deployments are declared from the flow object, so nothing here names an absolute path: the
runner starts each flow run from this project's working directory. One deployment per profile:
`prune-adapt/default` (the embedded benchmark at full size) and `prune-adapt/quick`.
"""

from __future__ import annotations

import flows  # noqa: F401  (telemetry off before Prefect loads)
from prefect import serve

from flows.prune_adapt import prune_adapt

DEPLOYMENTS = {"default": "the everyday grid on the embedded synthetic benchmark (about 11 min estimated at probe 70 images/s)",
               "full": "the benchmarks' grid (docs/RESULTS.md), about 4x the default's time",
               "quick": "the tests' size, a few minutes"}


def main() -> None:
    serve(*(prune_adapt.to_deployment(name=name, parameters={"profile": name}, description=text,
                                      tags=["reid-prune", name])
            for name, text in DEPLOYMENTS.items()))


if __name__ == "__main__":
    main()
