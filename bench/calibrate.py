"""Is the synthetic benchmark worth trusting? Train and measure the four reference points.

    python -m bench.calibrate --profile default --json docs/bench/calibrate.json

(a) source model on source test, (b) the same model on target test (direct transfer),
(c) a model trained on target labels, on target test, (d) a colour-histogram baseline on
target test. The benchmark is good when (a) >= 0.70, (c) - (b) >= 0.15 (a real domain gap)
and (c) - (d) >= 0.20 (identity is not a colour lookup).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from reid_models import stages
from reid_models.config import load_settings
from reid_models.data.loading import ImageSet, test_transform
from reid_models.evaluate import evaluate_features
from reid_models.features import color_histogram_features
from reid_models.models import resolve_device

GOALS = {"source_rank1": 0.70, "domain_gap": 0.15, "over_color_hist": 0.20}


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
        stages.prepare_domain(domain, getattr(settings.data, domain), settings.data, settings.seed)
    source = stages.load_domain(settings.data.source, settings.data, settings.seed)
    target = stages.load_domain(settings.data.target, settings.data, settings.seed)
    began = time.perf_counter()

    # The source model is the pipeline's own (outputs/pretrain): reused if `make run` trained it.
    source_model = stages.load_model(stages.pretrain(settings, Path(settings.outputs) / "pretrain")["checkpoint"])
    a = stages.evaluate_model(source_model, source, settings.data, settings.evaluate, device)
    b = stages.evaluate_model(source_model, target, settings.data, settings.evaluate, device)

    # (c): the same recipe, trained on the target domain's labelled training identities.
    target_path = settings.data.target
    on_target = load_settings(params, profile, [*overrides, f"data.source.kind={target_path.kind}",
                                                f"data.source.path={target_path.path}"])
    target_model = stages.load_model(stages.pretrain(on_target, out / "target")["checkpoint"])
    c = stages.evaluate_model(target_model, target, settings.data, settings.evaluate, device)
    d = color_histogram_metrics(target, settings.data)
    d_source = color_histogram_metrics(source, settings.data)  # context: how much colour alone carries

    result = {"profile": settings.profile, "model": settings.pretrain.model, "epochs": settings.pretrain.epochs,
              "seconds": round(time.perf_counter() - began, 1)}
    for name, metrics in {"source": a, "direct_target": b, "target_supervised": c, "color_hist_target": d,
                          "color_hist_source": d_source}.items():
        result[f"{name}_rank1"] = round(metrics["rank1"], 4)
        result[f"{name}_mAP"] = round(metrics["mAP"], 4)
    result["checks"] = {
        "source_rank1 >= 0.70": result["source_rank1"] >= GOALS["source_rank1"],
        "target_supervised - direct_target >= 0.15":
            result["target_supervised_rank1"] - result["direct_target_rank1"] >= GOALS["domain_gap"],
        "target_supervised - color_hist_target >= 0.20":
            result["target_supervised_rank1"] - result["color_hist_target_rank1"] >= GOALS["over_color_hist"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", choices=["quick", "default"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY.PATH=VALUE")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = calibrate(args.profile, args.params, args.overrides)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
