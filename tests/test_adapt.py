import copy

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



def tiny_adaptation(tiny_domains, epochs: int):
    """The tiny target's augmented training images, an OSNet x0.25 (seeded) and a 2 x 2 recipe."""
    from reid_models.config import FinetuneSettings
    from reid_models.data.loading import ImageSet, train_transform
    from reid_models.data.readers import read_market1501
    from reid_models.models import ReIDNet

    items = read_market1501(tiny_domains["target"]).train
    images = ImageSet.from_items(items, 64, 32, train_transform(64, 32, True, 2, 0.0), progress=False)
    torch.manual_seed(0)
    model = ReIDNet("osnet_x0_25", num_classes=3)
    return images, model, FinetuneSettings(epochs=epochs, ids_per_batch=2, images_per_id=2, batches_per_epoch=2)


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

    images, model, recipe = tiny_adaptation(tiny_domains, epochs=3)
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


def test_cluster_memory_scores_cosines_and_moves_centroids_by_momentum_in_batch_order():
    from reid_models.models import ClusterMemory

    centroids = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # stored at unit length
    memory = ClusterMemory(centroids, temperature=0.5, momentum=0.2)
    assert torch.allclose(memory.weight, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert not memory.weight.requires_grad  # centroids follow features, not gradients
    embedding = torch.tensor([[0.0, 0.0, 3.0], [0.0, 1.0, 1.0]])
    logits = memory(embedding)
    unit = torch.nn.functional.normalize(embedding, dim=1)
    assert torch.allclose(logits, unit @ memory.weight.t() / 0.5)

    memory.update(torch.tensor([0, 0]))  # both samples belong to pseudo-identity 0, applied one after the other
    expected = torch.tensor([1.0, 0.0, 0.0])
    for feature in unit:
        expected = 0.2 * expected + 0.8 * feature
        expected = expected / expected.norm()
    assert torch.allclose(memory.weight[0], expected, atol=1e-6)
    assert torch.equal(memory.weight[1], torch.tensor([0.0, 1.0, 0.0]))  # untouched
    assert torch.allclose(memory.weight.norm(dim=1), torch.ones(2))


def test_centroids_are_mean_unit_features_of_each_pseudo_identity():
    from reid_models.adapt import cluster_centroids

    features = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0], [9.0, 9.0]])
    centroids = cluster_centroids(features, np.array([0, 1, 0, -1]))  # the outlier (-1) is left out
    assert torch.allclose(centroids, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))


def test_label_free_eps_is_a_quantile_of_neighbour_distances_and_never_sees_labels():
    import inspect

    from reid_models.adapt import label_free_eps

    assert list(inspect.signature(label_free_eps).parameters) == ["graph", "quantile"]
    features, camids, pids = camera_biased_features()
    graph = jaccard_graph(camera_centred(features, camids).numpy(), k1=20, k2=6)
    eps = label_free_eps(graph, 0.5)
    assert eps == np.quantile(graph.data[graph.data > 0], 0.5)
    assert label_free_eps(graph, 0.2) < eps < label_free_eps(graph, 0.8)
    # on separable identities the label-free radius clusters them about as well as the tuned eps
    chosen = describe_clusters(pseudo_labels(features, camids, ClusterSettings(eps_quantile=0.5)), pids)
    assert chosen["adjusted_rand_index"] > 0.8 and chosen["outlier_share"] < 0.2


def test_per_epoch_reclustering_and_the_memory_head(tiny_domains, monkeypatch):
    from reid_models import adapt
    from reid_models.models import ClusterMemory

    memories = []

    class RecordedMemory(ClusterMemory):  # remembers where it started and how often it was updated
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.start, self.updates = self.weight.clone(), 0
            memories.append(self)

        def update(self, labels, cameras=None):
            super().update(labels, cameras)
            self.updates += 1

    monkeypatch.setattr(adapt, "ClusterMemory", RecordedMemory)
    images, model, recipe = tiny_adaptation(tiny_domains, epochs=3)
    history = adapt.adapt_unsupervised(model, images, recipe, ClusterSettings(k1=4, k2=2, eps=0.5, min_samples=2),
                                       epochs_per_round=1, device=torch.device("cpu"), progress=False,
                                       memory=adapt.MemorySettings(temperature=0.05, momentum=0.2))
    assert [r["round"] for r in history] == [1, 2, 3] and [r["epochs"] for r in history] == [1, 1, 1]
    assert all(np.isfinite(r["loss"]) for r in history)
    # a new memory each round, of that round's clusters, updated after every training step
    assert len(memories) == 3 and model.classifier is memories[-1]
    assert [m.out_features for m in memories] == [r["clusters"] for r in history]
    assert [m.updates for m in memories] == [2, 2, 2]  # batches per epoch x 1 epoch per round
    for memory in memories:
        assert not torch.allclose(memory.weight, memory.start)
        assert torch.allclose(memory.weight.norm(dim=1), torch.ones(memory.out_features), atol=1e-5)


def test_outliers_kept_as_instance_entries_are_negatives_never_targets(tiny_domains, monkeypatch):
    """adapt.memory.outliers: instances -- every image no cluster took is a memory row of its own
    (its unit feature), after the clusters' centroids; the training targets stay the clusters'."""
    from reid_models import adapt, features as features_module
    from reid_models.models import ClusterMemory

    memories, extracted = [], []

    class RecordedMemory(ClusterMemory):  # remembers where it started and what it was trained towards
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.start, self.targets = self.weight.clone(), []
            memories.append(self)

        def update(self, labels, cameras=None):
            self.targets.append(labels.clone())
            super().update(labels, cameras)

    real_extract = features_module.extract_features
    monkeypatch.setattr(adapt, "ClusterMemory", RecordedMemory)
    monkeypatch.setattr(features_module, "extract_features",  # the features each round clusters
                        lambda *a, **k: extracted.append(real_extract(*a, **k)) or extracted[-1])
    images, model, recipe = tiny_adaptation(tiny_domains, epochs=2)
    cluster = ClusterSettings(k1=4, k2=2, eps=0.3, min_samples=3)
    history = adapt.adapt_unsupervised(model, images, recipe, cluster, epochs_per_round=1,
                                       device=torch.device("cpu"), progress=False,
                                       memory=adapt.MemorySettings(outliers="instances"))
    outliers = [round(r["outlier_share"] * len(images)) for r in history]
    assert sum(outliers) > 0, "the settings must leave outliers, or this checks nothing"
    assert len(memories) == len(history) == len(extracted) == 2
    for memory, report, alone, features in zip(memories, history, outliers, extracted):
        assert memory.out_features == report["clusters"] + alone
        labels = adapt.pseudo_labels(features, images.camids, cluster)
        unit = torch.nn.functional.normalize(features[torch.from_numpy(labels < 0)].float(), dim=1)
        assert torch.allclose(memory.start[report["clusters"]:], unit, atol=1e-6)
        assert memory.targets and all(int(t.max()) < report["clusters"] for t in memory.targets)


def test_memory_bank_for_20000_images_stays_small():
    """The cluster memory is one unit vector per pseudo-identity (and, with `outliers: instances`,
    per outlier): starting it from 20,000 features in 10,000 clusters plus 5,000 outliers and
    training steps against it add well under 256 MB to the process's peak (the dense
    image-by-cluster alternative, 20,000 x 10,000 float32, is 800 MB alone)."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import ROOT

    script = textwrap.dedent("""
        import resource
        import numpy as np, torch
        from reid_models.adapt import memory_entries
        from reid_models.models import ClusterMemory
        n, clusters, dim = 20000, 10000, 512  # resnet18's embedding
        features = torch.randn(n, dim)
        labels = np.random.default_rng(0).integers(0, clusters, n)
        labels[:clusters] = np.arange(clusters)  # every cluster has a member
        labels[clusters:clusters + 5000] = -1    # and 5,000 outliers, each a memory entry of its own
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        memory = ClusterMemory(memory_entries(features, labels, "instances"))
        embedding = torch.randn(64, dim, requires_grad=True)
        for _ in range(5):
            targets = torch.from_numpy(labels[:64])
            torch.nn.functional.cross_entropy(memory(embedding), targets).backward()
            memory.update(targets)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024, memory.out_features)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    added_mb, clusters = result.stdout.split()[-2:]
    assert int(clusters) == 10000 + 5000 and float(added_mb) < 256


def test_mean_teacher_feeds_the_clustering_and_follows_the_student(tiny_domains, monkeypatch):
    """adapt.mean_teacher: every round clusters the features of one EMA copy of the adapting
    model, kept across rounds, whose weights move after the student's steps but stay apart."""

    from reid_models import adapt
    from reid_models import features as features_module

    images, model, recipe = tiny_adaptation(tiny_domains, epochs=2)
    start = copy.deepcopy(model.state_dict())
    clustered = []
    extract = features_module.extract_features

    def spy(network, *args, **kwargs):
        clustered.append(network)
        return extract(network, *args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", spy)
    history = adapt.adapt_unsupervised(model, images, recipe, ClusterSettings(k1=4, k2=2, eps=0.5, min_samples=2),
                                       epochs_per_round=1, device=torch.device("cpu"), progress=False,
                                       mean_teacher=0.9)
    assert len(history) == 2 and len(clustered) == 2
    teacher = clustered[0]
    assert teacher is clustered[1] and teacher is not model  # one teacher, across rounds
    name = "backbone.conv1.conv.weight"
    taught, student, began = teacher.state_dict()[name], model.state_dict()[name], start[name]
    assert not torch.equal(taught, began) and not torch.equal(taught, student)
    # an EMA at 0.9 over 4 steps stays between the start and the student
    assert (taught - began).norm() < (student - began).norm()


def test_camera_proxies_are_per_identity_and_camera_means_without_outliers():
    from reid_models.adapt import camera_proxies

    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    labels = np.array([0, 0, 1, -1, 0])
    cameras = torch.tensor([0, 1, 0, 0, 1])
    proxies, proxy_labels, proxy_cameras = camera_proxies(features, labels, cameras)
    assert list(zip(proxy_labels.tolist(), proxy_cameras.tolist())) == [(0, 0), (0, 1), (1, 0)]
    assert torch.allclose(proxies, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))  # unit features averaged


def test_camera_terms_pull_a_feature_to_its_own_proxies_and_update_only_them():
    from reid_models.models import CameraProxyMemory

    # two identities seen by two cameras: proxies (identity, camera)
    proxies = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0], [0.0, 0.6, 0.8]])
    memory = CameraProxyMemory(torch.eye(3)[[0, 2]], proxies, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]),
                               temperature=0.5, momentum=0.5)
    labels, cameras = torch.tensor([0]), torch.tensor([0])

    def terms_at(feature):
        embedding = feature.clone().requires_grad_(True)
        memory(embedding * 1.0)  # as in a network: the head sees a tensor of the autograd graph
        terms = memory.camera_terms(labels, cameras)
        terms["camera"].backward()
        return terms, embedding.grad

    near, grad = terms_at(torch.tensor([[1.0, 0.1, 0.0]]))
    far, _ = terms_at(torch.tensor([[0.0, 0.1, 1.0]]))  # looks like identity 1
    assert grad is not None and grad.abs().sum() > 0  # the terms train the network
    assert near["camera_intra"] < far["camera_intra"] and near["camera_inter"] < far["camera_inter"]
    before = memory.proxies.clone()
    memory.update(labels, cameras)
    moved = (memory.proxies - before).abs().sum(1) > 0
    assert moved.tolist() == [True, False, False, False]  # identity 0's camera-0 proxy only
    assert torch.allclose(memory.proxies.norm(dim=1), torch.ones(4))
    copy.deepcopy(memory)  # after a training step the head copies (BatchNorm folding, teachers copy models)


def test_unsupervised_rounds_train_with_camera_proxies(tiny_domains):
    from reid_models import adapt
    from reid_models.models import CameraProxyMemory
    from reid_models.train import train_model

    images, model, recipe = tiny_adaptation(tiny_domains, epochs=2)
    terms = []
    import reid_models.train as train_module

    def recording(*args, **kwargs):
        history = train_model(*args, **kwargs)
        terms.append(history[-1])
        return history

    train_module.train_model, saved = recording, train_module.train_model
    try:
        history = adapt.adapt_unsupervised(
            model, images, recipe, ClusterSettings(k1=4, k2=2, eps=0.5, min_samples=2), epochs_per_round=1,
            device=torch.device("cpu"), progress=False,
            memory=adapt.MemorySettings(camera_proxies=True, camera_negatives=5))
    finally:
        train_module.train_model = saved
    assert isinstance(model.classifier, CameraProxyMemory) and len(history) == 2
    assert all(np.isfinite(record["camera_intra"]) and np.isfinite(record["camera_inter"]) for record in terms)


def test_rounds_measure_their_clustering_on_held_out_identities_only(tiny_domains):
    """The per-round adjusted Rand index is computed on validation identities, clustered with the
    round's features; without `true_pids` no training label is read at all."""
    from reid_models.adapt import adapt_unsupervised
    from reid_models.config import FinetuneSettings
    from reid_models.data.loading import ImageSet, test_transform, train_transform
    from reid_models.data.readers import read_market1501
    from reid_models.models import ReIDNet

    splits = read_market1501(tiny_domains["target"])
    images = ImageSet.from_items(splits.train, 64, 32, train_transform(64, 32, True, 2, 0.0), progress=False)
    images.labels = torch.full_like(images.labels, -7)  # no identities here: nothing the rounds could use
    held_out = ImageSet.from_items(splits.query + splits.gallery, 64, 32, test_transform(), progress=False)
    torch.manual_seed(0)
    model = ReIDNet("osnet_x0_25", num_classes=3)
    recipe = FinetuneSettings(epochs=2, ids_per_batch=2, images_per_id=2, batches_per_epoch=2)
    history = adapt_unsupervised(model, images, recipe, ClusterSettings(k1=4, k2=2, eps=0.5, min_samples=2),
                                 epochs_per_round=1, device=torch.device("cpu"), validation=held_out, progress=False)
    assert len(history) == 2
    for report in history:
        assert "adjusted_rand_index" not in report  # no training truth given
        assert -1.0 <= report["val_adjusted_rand_index"] <= 1.0 and report["val_clusters"] >= 0
