"""The quick pipeline end to end on your own data: two-camera PNG datasets in CSV manifests
(arbitrary file names, no split column: the reader splits identities itself)."""

import json
import math
from pathlib import Path

import numpy as np

from reid_models.data.readers import read_csv_manifest
from reid_models.stats import PER_QUERY_FILE, load_per_query, resolvable_difference, scenario_comparisons
from tests.conftest import PARAMS, quick_overrides, write_csv_domain
from tests.test_flow import TINY, prefect_harness  # noqa: F401  (fixture)

IDS = 24  # per domain: half train (a share of them held out for validation), half test
SCENARIOS = {"source_only", "adapt_only", "prune_during"}  # no pruning, adaptation, both; supervised (time)


def test_quick_pipeline_runs_on_csv_manifests(prefect_harness, tmp_path):  # noqa: F811
    from flows.prune_adapt import prune_adapt, settings_for
    from reid_models.scenarios import images_budget

    domains = {"source": write_csv_domain(tmp_path / "cams_a", IDS, seed=0),
               "target": write_csv_domain(tmp_path / "cams_b", IDS, seed=1)}
    overrides = quick_overrides(tmp_path, domains, *TINY, "data.source.kind=csv", "data.target.kind=csv",
                                f"scenarios.names=[{','.join(sorted(SCENARIOS))}]", "scenarios.adaptation=[supervised]")
    result = prune_adapt(profile="quick", overrides=overrides, params=str(PARAMS))
    rows = {r["name"]: r for r in result["rows"]}

    assert set(rows) == SCENARIOS and len(result["rows"]) == len(SCENARIOS)
    budget = images_budget(settings_for("quick", overrides, str(PARAMS)))
    for name, row in rows.items():
        assert math.isfinite(row["rank1"]) and 0.0 <= row["rank1"] <= row["rank5"] <= 1.0, name
        assert 0.0 < row["mAP"] <= 1.0, name
        assert row["images_seen"] == (0 if name == "source_only" else budget), name
    assert budget > 0

    # Both manifests were read as CSV: every image counted, none invented.
    summary = json.loads((tmp_path / "outputs" / "data" / "summary.json").read_text())
    for domain, manifest in domains.items():
        listed = len(manifest.read_text().splitlines()) - 1
        counted = summary[domain]
        assert counted["cameras"] == 2, domain
        assert counted["train_images"] + counted["query"] + counted["gallery"] <= listed == IDS * 2 * 3
        assert counted["query"] > 0 and counted["gallery"] > 0 and counted["train_ids"] >= 2

    # The figures are the CSV target's test queries: same identities and cameras as its manifest gives.
    target = read_csv_manifest(domains["target"], seed=0)
    expected = sorted((pid, cam) for _, pid, cam in target.query)
    for row in rows.values():
        per_query = load_per_query(Path(row["result_dir"]) / PER_QUERY_FILE)
        assert sorted(zip(per_query["pid"].tolist(), per_query["camid"].tolist())) == expected
    # Identities are colour-coded: after supervised adaptation the model retrieves far above chance.
    chance = 1 / len({pid for _, pid, _ in target.query})
    assert rows["adapt_only"]["rank1"] > 3 * chance

    # How sure the run can be: a tiny test split resolves only large differences, and says so.
    resolution = json.loads(Path(result["paths"]["resolution"]).read_text())
    assert resolution["n_queries"] == len(target.query) and resolution["n_seeds"] == 1
    assert resolution["line"].startswith(f"with {len(target.query)} test queries")
    assert "one seed" in resolution["line"] and 100 * resolution["half_width"] > 10  # ~24 queries: coarse
    # The same comparisons on the first half of the test identities: fewer queries, a larger limit.
    kept = sorted({pid for _, pid, _ in target.query})[:len({pid for _, pid, _ in target.query}) // 2]

    def first_half(row: dict) -> dict:
        arrays = load_per_query(Path(row["result_dir"]) / PER_QUERY_FILE)
        keep = np.isin(arrays["pid"], kept)
        return {key: value[keep] for key, value in arrays.items()}

    halved = resolvable_difference(scenario_comparisons(result["rows"], first_half))
    assert halved["n_queries"] < resolution["n_queries"] and halved["half_width"] > resolution["half_width"]


def test_the_generated_dataset_is_a_two_camera_csv_with_arbitrary_names(tmp_path):
    manifest = write_csv_domain(tmp_path, 6, images_per_camera=1)
    lines = manifest.read_text().splitlines()
    assert lines[:2] == ["path,pid,camid", "img_0001.png,0,0"] and len(lines) == 1 + 6 * 2
    splits = read_csv_manifest(manifest)
    assert {cam for _, _, cam in splits.train + splits.query + splits.gallery} == {0, 1}
    assert len({pid for _, pid, _ in splits.train}) == 3  # identities halved: train / test
