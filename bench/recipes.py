"""Which from-scratch pretraining recipe? A sweep scored on the source *validation* split only.

    python -m bench.recipes --profile full --json docs/bench/recipes_full.json

Each recipe is a set of `-S` overrides of params.yaml's `pretrain` section; everything else
(backbone, input size, losses, P x K batches, epochs, seed) is the pipeline's. Every model is
trained from scratch on the source training identities (validation identities held out) and
scored on the source validation query/gallery (`data.val_share`), never on a test split. The
models are kept under outputs/bench/recipes/NAME, so a second run, and `bench.calibrate` (which
reports the test figures of the chosen default and of the plain recipe), reuse them.

`plain` is the recipe that reached rank-1 0.43 on a small real two-camera dataset where the
earlier default (`bot`, BoT's Adam 3.5e-4, made for fine-tuning ImageNet weights) reached 0.21:
docs/RESULTS.md section 2 and ../shared/REFERENCES.md section 7.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from bench.settings_cli import settings_parser
from reid_models import stages
from reid_models.checkpoint import save_json
from reid_models.config import Settings, load_settings
from reid_models.models import resolve_device

RECIPES: dict[str, list[str]] = {
    "bot": ["pretrain.optimizer=adam", "pretrain.lr=0.00035", "pretrain.warmup_epochs=2",
            "pretrain.augment.pad_crop=4"],
    "plain": ["pretrain.optimizer=adam", "pretrain.lr=0.001", "pretrain.warmup_epochs=5",
              "pretrain.augment.pad_crop=10"],
    "adam_2e-3": ["pretrain.optimizer=adam", "pretrain.lr=0.002", "pretrain.warmup_epochs=5",
                  "pretrain.augment.pad_crop=10"],
    "sgd_0.05": ["pretrain.optimizer=sgd", "pretrain.lr=0.05", "pretrain.warmup_epochs=5",
                 "pretrain.augment.pad_crop=10"],
}


def recipe_settings(params: str, profile: str, overrides: list[str], name: str) -> Settings:
    if name not in RECIPES:
        raise SystemExit(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return load_settings(params, profile, [*overrides, *RECIPES[name]])


def recipe_dir(settings: Settings, name: str, default: Settings) -> Path:
    """Where recipe `name` trains: the pipeline's own outputs/pretrain when it is the default
    recipe (so `make run`, `bench.calibrate` and this sweep train it once), else its own folder."""
    if settings.pretrain == default.pretrain:
        return Path(settings.outputs) / "pretrain"
    return Path(settings.outputs) / "bench" / "recipes" / name


def train_recipe(settings: Settings, name: str, default: Settings) -> dict:
    """The source model of recipe `name` (trained once, then reused): checkpoint and history."""
    return stages.pretrain(settings, recipe_dir(settings, name, default))


def score_on_validation(settings: Settings, checkpoint: str) -> dict:
    source = stages.load_domain(settings.data.source, settings.data, check_images=False)
    metrics = stages.evaluate_model(stages.load_model(checkpoint), source, settings.data, settings.evaluate,
                                    resolve_device(settings.device), split="val")
    return {"val_rank1": round(float(metrics["rank1"]), 4), "val_mAP": round(float(metrics["mAP"]), 4)}


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--json", type=Path, help="write the result here (after every recipe)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    names = args.recipes.split(",")
    all_settings = {name: recipe_settings(args.params, args.profile, args.overrides, name) for name in names}
    first = next(iter(all_settings.values()))
    default = load_settings(args.params, args.profile, args.overrides)
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(first.data, domain), first.data)
    rows = []
    for name, settings in all_settings.items():
        began = time.perf_counter()
        trained = train_recipe(settings, name, default)
        history = trained["history"]
        row = {"recipe": name, "is_default": settings.pretrain == default.pretrain, "overrides": RECIPES[name],
               "epochs": settings.pretrain.epochs,
               **score_on_validation(settings, trained["checkpoint"]), "seconds": round(time.perf_counter() - began, 1),
               "train_images_per_s": round(sum(r["images_per_s"] for r in history) / len(history), 1)}
        rows.append(row)
        print(json.dumps(row))
        if args.json:
            save_json(args.json, {"split": "source validation", "profile": first.profile, "rows": rows})
    best = max(rows, key=lambda r: (r["val_mAP"], r["val_rank1"]))
    print(f"best on the source validation split (mAP, then rank-1): {best['recipe']} "
          f"rank-1 {100 * best['val_rank1']:.1f} mAP {100 * best['val_mAP']:.1f}")


if __name__ == "__main__":
    main()
