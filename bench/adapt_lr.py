"""Which adaptation learning rates? adapt_only, supervised, scored on the target *validation* split.

    python -m bench.adapt_lr --profile full --json docs/bench/adapt_lr_full.json

Every candidate starts from the pipeline's source model (outputs/pretrain/model.pt, trained if
missing) and adapts for `scenarios.epochs` x `scenarios.batches_per_epoch` P x K batches on the
target's labelled training identities, exactly as the `adapt_only` scenario does; it is then
scored on the target's validation identities (held out of its training identities), never on a
test split. `adapt.train.lr` is the new identity head's rate, the backbone learns at
`adapt.backbone_lr_scale` of it; the same recipe serves every target step of every scenario.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from bench.settings_cli import settings_parser
from reid_models import stages
from reid_models.checkpoint import save_json
from reid_models.config import load_settings
from reid_models.models import resolve_device
from reid_models.scenarios import Scenario, ScenarioRun

CANDIDATES: dict[str, list[str]] = {  # head lr, backbone scale
    "head3.5e-3_x0.1": ["adapt.train.lr=0.0035", "adapt.backbone_lr_scale=0.1"],
    "head1e-2_x0.1": ["adapt.train.lr=0.01", "adapt.backbone_lr_scale=0.1"],
    "head3.5e-3_x0.3": ["adapt.train.lr=0.0035", "adapt.backbone_lr_scale=0.3"],
    "head1e-3_x0.1": ["adapt.train.lr=0.001", "adapt.backbone_lr_scale=0.1"],
    "head3.5e-3_x0.03": ["adapt.train.lr=0.0035", "adapt.backbone_lr_scale=0.03"],
}


def adapt_and_score(settings, source_checkpoint: str, out_dir: Path) -> dict:
    scenario = Scenario("adapt_only", "none", 0.0, "supervised", settings.seed)
    run = ScenarioRun(scenario, settings, out_dir, on_epoch=None, on_round=None, progress=True)
    run.model = stages.load_model(source_checkpoint)
    run.adapt(settings.scenarios.epochs)  # resumable: a finished step's model is reused
    target = stages.load_domain(settings.data.target, settings.data, check_images=False)
    metrics = stages.evaluate_model(run.model.eval(), target, settings.data, settings.evaluate,
                                    resolve_device(settings.device), split="val")
    return {"val_rank1": round(float(metrics["rank1"]), 4), "val_mAP": round(float(metrics["mAP"]), 4)}


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"of: {', '.join(CANDIDATES)}")
    parser.add_argument("--json", type=Path, help="write the result here (after every candidate)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    names = args.candidates.split(",")
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; valid: {', '.join(CANDIDATES)}")
    base = load_settings(args.params, args.profile, args.overrides)
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(base.data, domain), base.data)
    source = stages.pretrain(base, Path(base.outputs) / "pretrain")["checkpoint"]
    rows = []
    for name in names:
        settings = load_settings(args.params, args.profile, [*args.overrides, *CANDIDATES[name]])
        began = time.perf_counter()
        out_dir = Path(base.outputs) / "bench" / "adapt_lr" / name
        rows.append({"candidate": name, "overrides": CANDIDATES[name],
                     "is_default": settings.adapt == base.adapt,
                     **adapt_and_score(settings, source, out_dir), "seconds": round(time.perf_counter() - began, 1)})
        print(json.dumps(rows[-1]))
        if args.json:
            save_json(args.json, {"split": "target validation", "profile": base.profile, "rows": rows})
    best = max(rows, key=lambda r: (r["val_mAP"], r["val_rank1"]))
    print(f"best on the target validation split (mAP, then rank-1): {best['candidate']}")


if __name__ == "__main__":
    main()
