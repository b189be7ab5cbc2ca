"""How good are the pseudo-labels of unsupervised adaptation, and does camera-awareness help?

    python -m bench.clustering --json docs/bench/clustering_full.json

Extracts the features of the target domain's *validation* identities (held out of its training
identities, `data.val_share`; never the test split) with the source model
(`outputs/pretrain/model.pt`, i.e. the first round of unsupervised adaptation), clusters them at
several DBSCAN radii with and without removing each camera's mean feature, and scores the
pseudo-labels against the true identities (adjusted Rand index; outliers left out, as in
training). `adapt.cluster.eps` is chosen from this table. Also times 20,000
synthetic features and reports the process's peak memory and what clustering added to it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from reid_models import stages
from reid_models.adapt import ClusterSettings, describe_clusters, pseudo_labels
from reid_models.config import load_settings
from reid_models.data.loading import ImageSet, test_transform
from reid_models.features import extract_features
from reid_models.models import resolve_device


def target_features(settings) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    model = stages.load_model(Path(settings.outputs) / "pretrain" / "model.pt")
    splits = stages.load_domain(settings.data.target, settings.data, check_images=False)
    items = [*splits.val_query, *splits.val_gallery]
    images = ImageSet.from_items(items, settings.data.height, settings.data.width, test_transform())
    features = extract_features(model, images, resolve_device(settings.device))
    return features, images.camids, np.array([pid for _, pid, _ in items])


def resolved_eps(features: torch.Tensor, camids: torch.Tensor, chosen: ClusterSettings) -> float:
    """The radius `eps_quantile` picks for these features (what `pseudo_labels` clusters at)."""
    from reid_models.adapt import label_free_eps, neighbour_graph

    return label_free_eps(neighbour_graph(features, camids, chosen), chosen.eps_quantile)


def large_scale(n: int = 20_000) -> dict:
    rng = np.random.default_rng(0)
    ids = n // 10
    pids, camids = rng.integers(0, ids, n), rng.integers(0, 6, n)
    features = (rng.standard_normal((ids, 128))[pids] + rng.standard_normal((6, 128))[camids]
                + 0.4 * rng.standard_normal((n, 128)))
    features, camids = torch.tensor(features, dtype=torch.float32), torch.tensor(camids)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    labels = pseudo_labels(features, camids, ClusterSettings(eps=0.6))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": n, "seconds": time.perf_counter() - began, "peak_rss_mb": peak / 1024,
            "clustering_added_mb": (peak - baseline) / 1024, **describe_clusters(labels, pids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=["quick", "default", "full"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--eps", default="0.3,0.4,0.5,0.6")
    parser.add_argument("--eps-quantiles", default="0.01,0.02,0.05,0.1,0.2",
                        help="label-free thresholds: quantiles of the neighbour distances")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = load_settings(args.params, args.profile)
    features, camids, pids = target_features(settings)
    cluster = settings.adapt.cluster
    rows = []
    for eps in (float(e) for e in args.eps.split(",")):
        for aware in (True, False):
            chosen = ClusterSettings(k1=cluster.k1, k2=cluster.k2, eps=eps, min_samples=cluster.min_samples,
                                     camera_aware=aware)
            rows.append({"eps": eps, "camera_aware": aware, "images": len(pids), "true_ids": len(set(pids)),
                         **describe_clusters(pseudo_labels(features, camids, chosen), pids)})
            r = rows[-1]
            print(f"eps {eps:.2f} camera-aware {aware!s:>5}: {r['clusters']:4d} clusters, "
                  f"{100 * r['outlier_share']:.0f}% outliers, ARI {r['adjusted_rand_index']:.3f}")
    # The label-free threshold (`adapt.cluster.eps_quantile`): eps is a quantile of the round's own
    # neighbour distances, so it follows the features as they sharpen; the quantile is what the
    # validation identities choose here.
    for quantile in (float(q) for q in args.eps_quantiles.split(",") if q):
        chosen = ClusterSettings(k1=cluster.k1, k2=cluster.k2, min_samples=cluster.min_samples, camera_aware=True,
                                 eps_quantile=quantile)
        rows.append({"eps_quantile": quantile, "eps": resolved_eps(features, camids, chosen), "camera_aware": True,
                     "images": len(pids), "true_ids": len(set(pids)),
                     **describe_clusters(pseudo_labels(features, camids, chosen), pids)})
        r = rows[-1]
        print(f"eps quantile {quantile:.2f} (eps {r['eps']:.3f}): {r['clusters']:4d} clusters, "
              f"{100 * r['outlier_share']:.0f}% outliers, ARI {r['adjusted_rand_index']:.3f}")
    scale = large_scale()
    print(f"20,000 features: {scale['seconds']:.1f} s, process peak {scale['peak_rss_mb']:.0f} MB "
          f"(clustering added {scale['clustering_added_mb']:.0f} MB), "
          f"ARI {scale['adjusted_rand_index']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"target": rows, "large_scale": scale}, indent=2) + "\n")


if __name__ == "__main__":
    main()
