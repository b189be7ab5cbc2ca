"""Is the synthetic benchmark worth trusting? Train and measure the reference points.

    python -m bench.calibrate --profile full --json docs/bench/calibrate_full.json

(a) the pipeline's source model (the default pretraining recipe) on the source test split,
(b) the same model on the target test split (direct transfer), (c) a model trained with the same
recipe on the target's labelled training identities, on the target test split, (d) a
colour-histogram baseline on the target test split, and (e) the `plain` from-scratch recipe
(docs/RESULTS.md s.2) on the source test split, trained by the project on the same data and
epochs. The benchmark is good when 0.70 <= (a) <= 0.88 (hard, not saturated), (c) - (b) >= 0.15
(a real domain gap), (c) - (d) >= 0.20 (identity is not a colour lookup); the default recipe is
good when (a) >= (e). Validation-split figures (the split every setting is tuned on) are
reported beside the test figures; nothing is chosen here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from bench.recipes import recipe_settings, train_recipe
from bench.settings_cli import settings_parser
from reid_models import stages
from reid_models.checkpoint import save_json
from reid_models.config import load_settings
from reid_models.data.loading import ImageSet, test_transform
from reid_models.evaluate import evaluate_features
from reid_models.features import color_histogram_features
from reid_models.models import resolve_device

GOALS = {"source_rank1": (0.70, 0.88), "domain_gap": 0.15, "over_color_hist": 0.20}


def color_histogram_metrics(splits, data) -> dict:
    query = ImageSet.from_items(splits.query, data.height, data.width, test_transform())
    gallery = ImageSet.from_items(splits.gallery, data.height, data.width, test_transform())
    return evaluate_features(color_histogram_features(query.images), color_histogram_features(gallery.images),
                             query.labels.numpy(), gallery.labels.numpy(), query.camids.numpy(), gallery.camids.numpy())


def calibrate(profile: str, params: str, overrides: list[str]) -> dict:
    settings = load_settings(params, profile, overrides)
    device = resolve_device(settings.device)
    out = Path(settings.outputs) / "bench" / "calibrate"
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(settings.data, domain), settings.data)
    source = stages.load_domain(settings.data.source, settings.data)
    target = stages.load_domain(settings.data.target, settings.data)
    began = time.perf_counter()

    def evaluate(model, splits, split="test"):
        return stages.evaluate_model(model, splits, settings.data, settings.evaluate, device, split)

    # The source model is the pipeline's own (outputs/pretrain): reused if `make run` trained it.
    trained = stages.pretrain(settings, Path(settings.outputs) / "pretrain")
    source_model = stages.load_model(trained["checkpoint"])
    a, a_val = evaluate(source_model, source), evaluate(source_model, source, "val")
    b = evaluate(source_model, target)

    # (e): the plain from-scratch recipe (bench.recipes trains and reuses it).
    plain_settings = recipe_settings(params, profile, overrides, "plain")
    plain_model = stages.load_model(train_recipe(plain_settings, "plain", settings)["checkpoint"])
    e, e_val = evaluate(plain_model, source), evaluate(plain_model, source, "val")

    # (c): the same recipe, trained on the target domain's labelled training identities.
    target_path = settings.data.target
    on_target = load_settings(params, profile, [*overrides, f"data.source.kind={target_path.kind}",
                                                f"data.source.path={target_path.path}"])
    target_model = stages.load_model(stages.pretrain(on_target, out / "target")["checkpoint"])
    c, c_val = evaluate(target_model, target), evaluate(target_model, target, "val")
    d = color_histogram_metrics(target, settings.data)
    d_source = color_histogram_metrics(source, settings.data)  # context: how much colour alone carries

    history = trained["history"]
    result = {"profile": settings.profile, "model": settings.pretrain.model, "epochs": settings.pretrain.epochs,
              "recipe": {key: value for key, value in settings.pretrain.model_dump(mode="json").items()
                         if key in ("optimizer", "lr", "warmup_epochs", "schedule", "weight_decay", "augment")},
              "source_test_ids": len({pid for _, pid, _ in source.query}),
              "target_test_ids": len({pid for _, pid, _ in target.query}),
              "target_test_queries": len(target.query), "target_test_gallery": len(target.gallery),
              "source_val_ids": len({pid for _, pid, _ in source.val_query + source.val_gallery}),
              "train_images_per_s": round(sum(r["images_per_s"] for r in history) / len(history), 1),
              "seconds": round(time.perf_counter() - began, 1)}
    measured = {"source": a, "plain_recipe_source": e, "direct_target": b, "target_supervised": c,
                "color_hist_target": d, "color_hist_source": d_source,
                "source_val": a_val, "plain_recipe_source_val": e_val, "target_supervised_val": c_val}
    for name, metrics in measured.items():
        result[f"{name}_rank1"] = round(float(metrics["rank1"]), 4)
        result[f"{name}_mAP"] = round(float(metrics["mAP"]), 4)
    low, high = GOALS["source_rank1"]
    result["checks"] = {
        f"{low:.2f} <= source_rank1 <= {high:.2f}": low <= result["source_rank1"] <= high,
        "target_supervised - direct_target >= 0.15":
            result["target_supervised_rank1"] - result["direct_target_rank1"] >= GOALS["domain_gap"],
        "target_supervised - color_hist_target >= 0.20":
            result["target_supervised_rank1"] - result["color_hist_target_rank1"] >= GOALS["over_color_hist"],
        "source_rank1 >= plain_recipe_source_rank1": result["source_rank1"] >= result["plain_recipe_source_rank1"],
        "target_test_ids >= 750": result["target_test_ids"] >= 750,
    }
    return result


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = calibrate(args.profile, args.params, args.overrides)
    print(json.dumps(result, indent=2))
    if args.json:
        save_json(args.json, result)


if __name__ == "__main__":
    main()
