"""bench.unsupervised's summary: the share of the direct-transfer -> supervised gap closed."""

import pytest

from bench.unsupervised import PLAN, VARIANTS, gap_closed


def _row(label: str, seed: int, rank1: float) -> dict:
    return {"label": label, "seed": seed, "rank1": rank1}


def test_gap_closed_is_per_seed_share_of_the_gap_with_the_seed_spread():
    rows = [_row("source_only", 0, 0.02), _row("adapt_only_supervised", 0, 0.34), _row("adapt_only", 0, 0.18),
            _row("source_only", 1, 0.04), _row("adapt_only_supervised", 1, 0.36), _row("adapt_only", 1, 0.28),
            _row("adapt_only_memory", 0, 0.30)]  # seed 1 of the memory run is missing: one seed only
    shares = gap_closed(rows)
    assert shares["adapt_only"]["per_seed"] == {0: pytest.approx(0.5), 1: pytest.approx(0.75)}
    assert shares["adapt_only"]["mean"] == pytest.approx(0.625)
    assert shares["adapt_only"]["rank1_spread_points"] == pytest.approx(10.0)
    assert shares["adapt_only_memory"]["per_seed"] == {0: pytest.approx(0.875)}
    assert "prune_during" not in shares  # only unsupervised adapt_only rows close the gap


def test_each_unsupervised_run_states_its_recipe_so_a_new_default_changes_no_label():
    for name, overrides in VARIANTS.items():
        if name != "default":
            assert {"adapt.head", "adapt.epochs_per_round", "adapt.pseudo_labels"} <= {o.split("=")[0] for o in overrides}
    assert VARIANTS["default"] == []
    assert all(run.variant != "default" for run in PLAN if run.adaptation == "unsupervised")
