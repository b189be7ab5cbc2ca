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
    aware = describe_clusters(pseudo_labels(features, camids, ClusterSettings(camera_aware=True)), pids)
    plain = describe_clusters(pseudo_labels(features, camids, ClusterSettings(camera_aware=False)), pids)
    assert aware["adjusted_rand_index"] > 0.9
    assert aware["adjusted_rand_index"] > plain["adjusted_rand_index"] + 0.2
    assert 80 <= aware["clusters"] <= 120 and aware["outlier_share"] < 0.1


def test_jaccard_graph_is_sparse_symmetric_and_bounded():
    features, camids, _ = camera_biased_features(n=600)
    graph = jaccard_graph(camera_centred(features, camids).numpy(), k1=10, k2=4)
    assert graph.nnz <= 2 * 600 * 10  # only k-NN pairs, never dense
    assert abs(graph - graph.T).max() < 1e-12
    assert graph.data.min() >= 0.0 and graph.data.max() <= 1.0
