"""Adapting a ReID model to a new set of cameras.

- Supervised: the target's training identities are labelled; fine-tune with a new classifier
  and a slower backbone (the setting of Masson et al. 2021).
- Unsupervised (the common real case): rounds of extract target features -> pseudo-labels by
  clustering -> train on them. Clustering is the standard recipe of UDA ReID (k-reciprocal
  re-encoded Jaccard distance + DBSCAN), computed *sparsely*: faiss finds the k nearest
  neighbours and only those pairs ever get a distance, so 20,000 images never need the dense
  20k x 20k matrix. It is camera-aware, because matching across cameras is the task: each
  camera's mean feature is removed before clustering (so a camera's style does not become a
  cluster), and P x K batches draw an identity's K images from as many cameras as it has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import DBSCAN

from reid_models.models import CameraProxyMemory, ClusterMemory

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Camera-aware features


def camera_centred(features: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
    """Remove each camera's mean feature, then L2-normalise: what is left is less camera style."""
    centred = features.clone().float()
    for cam in camids.unique():
        mask = camids == cam
        centred[mask] -= centred[mask].mean(0, keepdim=True)
    return torch.nn.functional.normalize(centred, dim=1)


def nearest_neighbours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine similarity (faiss, inner product on unit vectors),
    self included first. Returns (distances = 1 - similarity, indices), each N x k."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(features)
    similarity, indices = index.search(features, min(k, len(features)))
    return 1.0 - similarity, indices


# ---------------------------------------------------------------------------------------------
# Sparse k-reciprocal Jaccard distance (Zhong et al. 2017), restricted to k-NN pairs


def _reciprocal(indices: np.ndarray, i: int, k: int) -> np.ndarray:
    """i's k-reciprocal neighbours: j in i's top k and i in j's top k."""
    forward = indices[i, : k + 1]
    return forward[np.any(indices[forward, : k + 1] == i, axis=1)]


def jaccard_graph(features: np.ndarray, k1: int = 20, k2: int = 6, pair_chunk: int = 50_000) -> sparse.csr_matrix:
    """Jaccard distances between each image and its k1 nearest neighbours, as a sparse matrix.

    Memory is O(N * k1): the k-reciprocal encodings are sparse rows, and distances are only
    computed for neighbour pairs (all DBSCAN needs with an eps below the k1-th distance),
    `pair_chunk` pairs at a time.
    """
    n = len(features)
    distances, indices = nearest_neighbours(features, k1 + 1)
    rows, cols, values = [], [], []
    for i in range(n):
        expanded = _reciprocal(indices, i, k1)
        # Expansion: add a neighbour's own reciprocal set when it mostly overlaps (robust to noise).
        for j in expanded:
            candidate = _reciprocal(indices, j, max(1, k1 // 2))
            if len(np.intersect1d(candidate, expanded)) > 2 / 3 * len(candidate):
                expanded = np.union1d(expanded, candidate)
        position = {int(j): p for p, j in enumerate(indices[i])}
        weights = np.exp(-np.array([distances[i, position[j]] if j in position else
                                    1.0 - float(features[i] @ features[j]) for j in expanded]))
        rows += [i] * len(expanded)
        cols += expanded.tolist()
        values += (weights / weights.sum()).tolist()
    encoding = sparse.csr_matrix((values, (rows, cols)), shape=(n, n))
    # Query expansion: average each encoding with those of its k2 nearest neighbours.
    expand = sparse.csr_matrix((np.full(n * k2, 1.0 / k2), (np.repeat(np.arange(n), k2),
                                                            indices[:, :k2].reshape(-1))), shape=(n, n))
    encoding = (expand @ encoding).tocsr()

    pair_rows = np.repeat(np.arange(n), indices.shape[1])
    pair_cols = indices.reshape(-1)
    jaccard = np.empty(len(pair_rows))
    for start in range(0, len(pair_rows), pair_chunk):  # chunks bound the gathered encodings' memory
        chunk = slice(start, start + pair_chunk)
        left, right = encoding[pair_rows[chunk]], encoding[pair_cols[chunk]]
        minimum = np.asarray(left.minimum(right).sum(1)).ravel()
        maximum = np.asarray(left.maximum(right).sum(1)).ravel()
        jaccard[chunk] = 1.0 - minimum / np.maximum(maximum, 1e-12)
    keep = pair_rows != pair_cols  # DBSCAN counts the point itself; leave the diagonal implicit
    graph = sparse.csr_matrix((jaccard[keep], (pair_rows[keep], pair_cols[keep])), shape=(n, n))
    return graph.maximum(graph.T).tocsr()  # symmetric


@dataclass(frozen=True)
class ClusterSettings:
    k1: int = 20
    k2: int = 6
    eps: float = 0.4
    min_samples: int = 4
    camera_aware: bool = True
    eps_quantile: float | None = None  # set: eps is this quantile of each round's graph (label_free_eps)


def label_free_eps(graph: sparse.csr_matrix, quantile: float) -> float:
    """DBSCAN's radius from the features alone: the `quantile` of the Jaccard distances between
    mutual neighbours (the pairs the sparse graph stores). It follows the distance scale as the
    features tighten over rounds, where a fixed eps does not; it never sees an identity label."""
    distances = graph.data[graph.data > 0]
    if not len(distances):
        raise ValueError("adapt.cluster.eps_quantile: the neighbour graph holds no distances (too few images?)")
    return float(np.quantile(distances, quantile))


def neighbour_graph(features: torch.Tensor, camids: torch.Tensor, settings: ClusterSettings) -> sparse.csr_matrix:
    """The k-reciprocal Jaccard distances DBSCAN clusters (camera means removed first if camera-aware)."""
    if settings.camera_aware:
        features = camera_centred(features, camids)
    else:
        features = torch.nn.functional.normalize(features.float(), dim=1)
    return jaccard_graph(features.numpy(), settings.k1, settings.k2)


def pseudo_labels(features: torch.Tensor, camids: torch.Tensor, settings: ClusterSettings) -> np.ndarray:
    """Cluster target features into pseudo-identities; -1 marks outliers (left out of training)."""
    graph = neighbour_graph(features, camids, settings)
    eps = settings.eps if settings.eps_quantile is None else label_free_eps(graph, settings.eps_quantile)
    # Pairs outside each other's k1 neighbourhoods are absent from the sparse graph, i.e. "far".
    return DBSCAN(eps=eps, min_samples=settings.min_samples, metric="precomputed").fit_predict(graph)


def pseudo_labelled(images, labels: np.ndarray):
    """The images of `images` (an ImageSet) that got a pseudo-identity, labelled with it (outliers, -1, left out)."""
    from reid_models.data.loading import ImageSet

    kept = torch.from_numpy(labels >= 0)
    return ImageSet(images.images[kept], torch.from_numpy(labels[labels >= 0]), images.camids[kept], images.transform)


def memory_entries(features: torch.Tensor, labels: np.ndarray, outliers: str = "drop") -> torch.Tensor:
    """The cluster memory's starting rows: each pseudo-identity's centroid, then with `outliers:
    instances` each outlier's own unit feature, as SpCL's instance entries. Outliers are still no
    training sample (no row is ever a target beyond the clusters'): their entries are negatives
    that every sample is pushed away from, so an image no cluster took still shapes the space."""
    centroids = cluster_centroids(features, labels)
    if outliers == "drop":
        return centroids
    alone = torch.nn.functional.normalize(features[torch.from_numpy(labels < 0)].float(), dim=1)
    return torch.cat([centroids, alone])


def cluster_centroids(features: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Mean unit-length feature of each pseudo-identity (outliers, -1, left out): the memory's start."""
    kept = torch.from_numpy(labels >= 0)
    index = torch.from_numpy(labels[labels >= 0]).long()
    unit = torch.nn.functional.normalize(features[kept].float(), dim=1)
    sums = torch.zeros(int(index.max()) + 1, unit.shape[1]).index_add_(0, index, unit)
    return sums / torch.bincount(index).unsqueeze(1)


def describe_clusters(labels: np.ndarray, true_pids: np.ndarray | None = None) -> dict:
    """Round diagnostics: cluster count, outliers, and (when the truth is known) label quality."""
    report = {"clusters": int(labels.max() + 1) if len(labels) else 0,
              "outlier_share": float(np.mean(labels < 0)) if len(labels) else 0.0}
    if true_pids is not None and np.any(labels >= 0):
        from sklearn.metrics import adjusted_rand_score

        kept = labels >= 0
        report["adjusted_rand_index"] = float(adjusted_rand_score(true_pids[kept], labels[kept]))
    return report


RoundCallback = Callable[[dict], None]


@dataclass(frozen=True)
class MemorySettings:
    """The cluster memory head (`adapt.head: memory`); Cluster-Contrast's defaults. With
    `camera_proxies`, CAP's intra- and inter-camera proxy terms too (`models.CameraProxyMemory`)."""
    temperature: float = 0.05
    momentum: float = 0.2
    camera_proxies: bool = False
    camera_weight: float = 0.5
    camera_negatives: int = 50
    outliers: str = "drop"  # or "instances": each outlier's feature is a memory entry too (`memory_entries`)


def camera_proxies(features: torch.Tensor, labels: np.ndarray, camids: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean feature of every (pseudo-identity, camera) pair with images (outliers, -1, left out):
    proxies, their identities and their cameras."""
    kept = labels >= 0
    pairs = np.stack([labels[kept], camids.numpy()[kept]], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(-1))
    normalised = torch.nn.functional.normalize(features[torch.from_numpy(kept)].float(), dim=1)
    sums = torch.zeros(len(unique), features.shape[1]).index_add_(0, inverse, normalised)
    means = sums / torch.bincount(inverse, minlength=len(unique)).unsqueeze(1)
    return means, torch.from_numpy(unique[:, 0]), torch.from_numpy(unique[:, 1])


# ---------------------------------------------------------------------------------------------
# The two adaptation modes


def adapt_supervised(model, target_train, recipe, device: torch.device, seed: int = 0,
                     backbone_lr_scale: float = 0.1, **train_options) -> list[dict]:
    """Fine-tune on labelled target identities: a new classifier, a slower backbone."""
    from reid_models.train import train_model

    model.reset_classifier(int(target_train.labels.max()) + 1, generator=torch.Generator().manual_seed(seed))
    return train_model(model, target_train, recipe, device, seed=seed, backbone_lr_scale=backbone_lr_scale,
                       **train_options)


def adapt_unsupervised(model, target_train, recipe, cluster: ClusterSettings, epochs_per_round: int,
                       device: torch.device, seed: int = 0, on_round: RoundCallback | None = None,
                       true_pids: np.ndarray | None = None, backbone_lr_scale: float = 0.1,
                       epoch_hook: Callable[[int], None] | None = None,
                       on_labels: Callable[[object], None] | None = None,
                       checkpoint_dir: str | Path | None = None, memory: MemorySettings | None = None,
                       label_model: torch.nn.Module | None = None, mean_teacher: float | None = None,
                       validation=None, **train_options) -> list[dict]:
    """Rounds of: features of the unlabelled target images -> pseudo-labels -> training on them,
    `epochs_per_round` epochs each, until `recipe.epochs` epochs are spent.

    The identity head of each round is a new random classifier, or with `memory` a cluster memory
    started at the round's centroids (`models.ClusterMemory`: InfoNCE against momentum-updated
    centroids, no label smoothing, Cluster-Contrast's objective) beside the triplet term.

    The pseudo-labels come from `label_model`'s features when given (an unpruned teacher of a
    pruned student: bad features of the network being pruned would make bad clusters, and those
    worse features), else, with `mean_teacher` (a momentum), from a mean teacher's (an EMA of
    `model`'s weights after every step, kept across rounds, as MMT's clustering does; only when
    no other teacher is given), else from `model`'s.
    `target_train.labels` are ignored (pass `true_pids` only to report pseudo-label quality). With
    `validation` (images of held-out identities, their true labels), each round also clusters
    those with the same features and settings and reports the adjusted Rand index against the
    true identities there (`val_adjusted_rand_index`): the clustering's quality, measured without
    touching a training label.
    `epoch_hook(e)` gets the epoch index across rounds (progressive pruning rides on it);
    `on_labels(subset)` sees each round's pseudo-labelled training set (e.g. for Taylor's
    gradient batches). With `checkpoint_dir`, each round resumes from its own epoch checkpoint.
    """
    from reid_models.data.loading import ImageSet, test_transform
    from reid_models.features import extract_features
    from reid_models.train import train_model

    if mean_teacher is not None and label_model is None and train_options.get("teacher") is None:
        from reid_models.config import PruneSettings
        from reid_models.pruning.recovery import Teacher

        train_options["teacher"] = Teacher(model, PruneSettings(), mean_teacher, f"mean teacher (EMA {mean_teacher:g})",
                                           distill=False)
        label_model = train_options["teacher"].model
    history: list[dict] = []
    plain_view = ImageSet(target_train.images, target_train.labels, target_train.camids, test_transform())
    done, round_index = 0, 0
    while done < recipe.epochs:
        round_index += 1
        epochs = min(epochs_per_round, recipe.epochs - done)
        features = extract_features(label_model or model, plain_view, device)
        labels = pseudo_labels(features, target_train.camids, cluster)
        report = {"round": round_index, **describe_clusters(labels, true_pids)}
        if validation is not None and len(validation) > cluster.k1:  # too few to cluster: no figure
            held_out = pseudo_labels(extract_features(label_model or model, validation, device), validation.camids,
                                     cluster)
            described = describe_clusters(held_out, validation.labels.numpy())
            report.update(val_clusters=described["clusters"], val_outlier_share=described["outlier_share"],
                          val_adjusted_rand_index=described.get("adjusted_rand_index", 0.0))
        if report["clusters"] < max(2, recipe.ids_per_batch):
            raise ValueError(f"round {round_index}: clustering found {report['clusters']} pseudo-identities, fewer "
                             f"than a batch's {recipe.ids_per_batch}; raise adapt.cluster.eps or lower "
                             "adapt.cluster.min_samples")
        subset = pseudo_labelled(target_train, labels)
        if on_labels:
            on_labels(subset)
        round_recipe = recipe.model_copy(update={"epochs": epochs})
        if memory is None:
            model.reset_classifier(report["clusters"],
                                   generator=torch.Generator().manual_seed(seed * 1000 + round_index))
        else:
            device_of_model = next(model.parameters()).device
            # The memory lives in the student's feature space, whoever's features made the labels.
            own = features if label_model is None else extract_features(model, plain_view, device)
            centroids = memory_entries(own, labels, memory.outliers).to(device_of_model)
            if memory.camera_proxies:
                model.classifier = CameraProxyMemory(centroids, *camera_proxies(own, labels, target_train.camids),
                                                     memory.temperature, memory.momentum, memory.camera_negatives,
                                                     memory.camera_weight)
            else:
                model.classifier = ClusterMemory(centroids, memory.temperature, memory.momentum)
            round_recipe = round_recipe.model_copy(update={"label_smoothing": 0.0})
        offset = done
        hook = (lambda epoch, offset=offset: epoch_hook(offset + epoch)) if epoch_hook else None
        checkpoint = Path(checkpoint_dir) / f"round_{round_index}.pt" if checkpoint_dir else None
        trained = train_model(model, subset, round_recipe, device,
                              seed=seed * 1000 + round_index, backbone_lr_scale=backbone_lr_scale,
                              epoch_hook=hook, checkpoint_path=checkpoint, **train_options)
        done += epochs
        report.update(loss=trained[-1]["loss"], epochs=epochs, images=sum(e["images"] for e in trained))
        history.append(report)
        log.info("adaptation round %d: %d clusters, %.1f%% outliers", round_index, report["clusters"],
                 100 * report["outlier_share"])
        if on_round:
            on_round(report)
    return history
