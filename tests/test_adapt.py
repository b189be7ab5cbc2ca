import numpy as np
import torch

from reid_models.adapt import ClusterSettings, camera_centred, describe_clusters, jaccard_graph, pseudo_labels


def camera_biased_features(n=1500, ids=100, cameras=5, dim=64, bias=1.5, seed=0):
    """Identity centres plus a strong per-camera offset: the target-domain failure mode."""
    rng = np.random.default_rng(seed)
    pids, camids = rng.integers(0, ids, n), rng.integers(0, cameras, n)
    features = (rng.standard_normal((ids, dim))[pids] + bias * rng.standard_normal((cameras, dim))[camids]
                + 0.5 * rng.standard_normal((n, dim)))
    return torch.tensor(features, dtype=torch.float32), torch.tensor(camids), pids


def test_camera_centring_removes_each_cameras_mean():
    features, camids, _ = camera_biased_features()
    centred = camera_centred(features, camids)
    assert torch.allclose(centred.norm(dim=1), torch.ones(len(centred)), atol=1e-5)
    raw_gap = (features[camids == 0].mean(0) - features[camids == 1].mean(0)).norm()
    unit = torch.nn.functional.normalize(features, dim=1)
    assert (centred[camids == 0].mean(0) - centred[camids == 1].mean(0)).norm() < 0.2 * (
        unit[camids == 0].mean(0) - unit[camids == 1].mean(0)).norm()
    assert raw_gap > 1.0


def test_camera_aware_clustering_recovers_identities_that_plain_clustering_splits():
    features, camids, pids = camera_biased_features()
    aware = describe_clusters(pseudo_labels(features, camids, ClusterSettings(eps=0.6, camera_aware=True)), pids)
    plain = describe_clusters(pseudo_labels(features, camids, ClusterSettings(eps=0.6, camera_aware=False)), pids)
    assert aware["adjusted_rand_index"] > 0.9
    assert aware["adjusted_rand_index"] > plain["adjusted_rand_index"] + 0.2
    assert 80 <= aware["clusters"] <= 120 and aware["outlier_share"] < 0.1


def test_jaccard_graph_is_sparse_symmetric_and_bounded():
    features, camids, _ = camera_biased_features(n=600)
    graph = jaccard_graph(camera_centred(features, camids).numpy(), k1=10, k2=4)
    assert graph.nnz <= 2 * 600 * 10  # only k-NN pairs, never dense
    assert abs(graph - graph.T).max() < 1e-12
    assert graph.data.min() >= 0.0 and graph.data.max() <= 1.0


def test_unsupervised_rounds_train_on_pseudo_labels(tiny_domains):
    from reid_models.adapt import adapt_unsupervised
    from reid_models.config import FinetuneSettings
    from reid_models.data.loading import ImageSet, train_transform
    from reid_models.data.readers import read_market1501
    from reid_models.models import ReIDNet

    items = read_market1501(tiny_domains["target"]).train
    images = ImageSet.from_items(items, 64, 32, train_transform(64, 32, True, 2, 0.0), progress=False)
    torch.manual_seed(0)
    model = ReIDNet("osnet_x0_25", num_classes=3)
    recipe = FinetuneSettings(epochs=3, ids_per_batch=2, images_per_id=2, batches_per_epoch=2)
    reports, hooked = [], []
    history = adapt_unsupervised(model, images, recipe, ClusterSettings(k1=4, k2=2, eps=0.5, min_samples=2),
                                 epochs_per_round=2, device=torch.device("cpu"), on_round=reports.append,
                                 true_pids=images.labels.numpy(), epoch_hook=hooked.append, progress=False)
    assert [r["round"] for r in history] == [1, 2] and reports == history
    assert [r["epochs"] for r in history] == [2, 1] and hooked == [0, 1, 2]  # epochs counted across rounds
    assert sum(r["images"] for r in history) == 3 * 2 * 2 * 2  # epochs x batches x P x K
    for report in history:
        assert report["clusters"] >= 2 and report["images"] > 0 and np.isfinite(report["loss"])
        assert -1.0 <= report["adjusted_rand_index"] <= 1.0
    assert model.classifier.out_features == history[-1]["clusters"]
