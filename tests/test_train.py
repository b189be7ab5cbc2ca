import pytest
import torch

from reid_models.config import TrainSettings
from reid_models.data.loading import IdentityBatchSampler, ImageSet, relabel, train_transform
from reid_models.models import ReIDNet
from reid_models.train import batch_hard_triplet_loss, lr_factor, train_model

SETTINGS = TrainSettings(epochs=2, warmup_epochs=1, ids_per_batch=2, images_per_id=2, lr=1e-3)


def tiny_train_set(tiny_domains) -> ImageSet:
    from reid_models.data.readers import read_market1501

    items = read_market1501(tiny_domains["source"]).train
    images = ImageSet.from_items(items, 64, 32, train_transform(64, 32, True, 2, 0.5), progress=False)
    images.labels = torch.as_tensor(relabel([pid for _, pid, _ in items]))
    return images


def test_batch_hard_triplet_picks_hardest_pairs():
    features = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest positive 1.0, hardest negative 3.0 -> relu(1 - 3 + m)
    margin = 2.5
    expected = torch.tensor([1 - 3 + margin, 1 - 2 + margin, 0.5 - 2 + margin, 0.5 - 2.5 + margin]).clamp(min=0).mean()
    assert torch.isclose(batch_hard_triplet_loss(features, labels, margin), expected)


def test_identity_sampler_gives_p_ids_with_k_images_and_is_seeded():
    labels = [i // 5 for i in range(40)]  # 8 ids x 5 images
    sampler = IdentityBatchSampler(labels, ids_per_batch=4, images_per_id=2, seed=3)
    batches = list(sampler)
    assert batches, "no batch"
    for batch in batches:
        ids = [labels[i] for i in batch]
        assert len(batch) == 8 and len(set(ids)) == 4 and all(ids.count(i) == 2 for i in set(ids))
    again = IdentityBatchSampler(labels, ids_per_batch=4, images_per_id=2, seed=3)
    assert list(again) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_lr_schedule_warms_up_then_decays():
    settings = TrainSettings(epochs=10, warmup_epochs=2)
    factors = [lr_factor(e, settings) for e in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:])) and factors[-1] < 0.1


def test_training_is_reproducible_and_resumes_exactly(tiny_domains, tmp_path):
    images = tiny_train_set(tiny_domains)
    num_classes = int(images.labels.max()) + 1

    def fresh() -> ReIDNet:
        torch.manual_seed(0)
        return ReIDNet("osnet_x0_25", num_classes)

    full = fresh()
    history = train_model(full, images, SETTINGS, torch.device("cpu"), seed=0, progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)

    # Same seed -> same weights.
    twin = fresh()
    train_model(twin, images, SETTINGS, torch.device("cpu"), seed=0, progress=False)
    for (name, a), b in zip(full.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name

    # Crash right after epoch 1 was checkpointed, then re-run: it resumes and ends identical.
    checkpoint = tmp_path / "last.pt"

    def crash(record):
        raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_model(fresh(), images, SETTINGS, torch.device("cpu"), seed=0, checkpoint_path=checkpoint,
                    on_epoch=crash, progress=False)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    resumed = fresh()
    resumed_history = train_model(resumed, images, SETTINGS, torch.device("cpu"), seed=0,
                                  checkpoint_path=checkpoint, progress=False)
    assert [h["epoch"] for h in resumed_history] == [1, 2]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_model_returns_embedding_in_eval_and_logits_in_train():
    torch.manual_seed(0)
    model = ReIDNet("resnet18", num_classes=5)
    images = torch.randn(4, 3, 64, 32)
    out = model.train()(images)
    assert out.logits.shape == (4, 5) and out.features.shape == (4, model.feature_dim)
    embedding = model.eval()(images)
    assert embedding.shape == (4, 512)



def test_a_new_identity_head_lands_on_the_models_device():
    # Unsupervised rounds reset the head after feature extraction moved the model to the GPU;
    # a head left on the CPU breaks the channel graph's trace. "meta" stands in for CUDA here.
    torch.manual_seed(0)
    model = ReIDNet("resnet18", num_classes=5).to("meta")
    model.reset_classifier(7)
    assert model.classifier.weight.device.type == "meta" and model.classifier.out_features == 7
    cpu_model, again = ReIDNet("resnet18", num_classes=5), ReIDNet("resnet18", num_classes=5)
    for reset in (cpu_model, again):
        torch.manual_seed(1)
        reset.reset_classifier(7)
    assert torch.equal(cpu_model.classifier.weight, again.classifier.weight)  # seeded: same head on any device

def test_a_checkpoint_of_another_architecture_is_not_resumed(tiny_domains, tmp_path):
    """Same recipe and data but a different (e.g. pruned) network: train from scratch, don't crash."""
    images = tiny_train_set(tiny_domains)
    num_classes = int(images.labels.max()) + 1
    checkpoint = tmp_path / "last.pt"
    one_epoch = SETTINGS.model_copy(update={"epochs": 1, "warmup_epochs": 0})
    torch.manual_seed(0)
    train_model(ReIDNet("osnet_x0_25", num_classes), images, one_epoch, torch.device("cpu"),
                checkpoint_path=checkpoint, progress=False)
    torch.manual_seed(0)
    history = train_model(ReIDNet("resnet18", num_classes), images, one_epoch, torch.device("cpu"),
                          checkpoint_path=checkpoint, progress=False)
    assert [h["epoch"] for h in history] == [1]  # trained, not "resumed" into a mismatched network


def test_a_hook_adds_its_loss_term_and_runs_after_each_step(tiny_domains):
    """The loop knows heads and teachers only as hooks (train.TrainingHook): the term the hook names
    joins the loss (its gradient reaches the model), every term is logged, and `after_step` runs once
    per optimizer step, after it."""
    from reid_models.train import TrainingHook, training_hooks

    images = tiny_train_set(tiny_domains)
    torch.manual_seed(0)
    model = ReIDNet("osnet_x0_25", int(images.labels.max()) + 1)

    class Recorder:
        added_loss = "pull"

        def __init__(self):
            self.steps = 0

        def loss_terms(self, images, out, labels, cameras):
            return {"pull": 10.0 * out.features.pow(2).mean(), "logged_only": torch.tensor(1.0)}

        def after_step(self, model, labels, cameras):
            self.steps += 1

        def to(self, device):  # passed as the teacher, which the loop moves to the device
            return self

    hook = Recorder()
    assert isinstance(hook, TrainingHook) and training_hooks(model, hook) == [hook]
    assert training_hooks(model) == []  # a plain classifier is no hook
    settings = SETTINGS.model_copy(update={"batches_per_epoch": 3})
    history = train_model(model, images, settings, torch.device("cpu"), seed=0, progress=False, teacher=hook)
    assert hook.steps == 2 * 3
    assert {"pull", "logged_only"} <= set(history[0]) and history[0]["logged_only"] == pytest.approx(1.0)
    torch.manual_seed(0)
    plain = ReIDNet("osnet_x0_25", int(images.labels.max()) + 1)
    without = train_model(plain, images, settings, torch.device("cpu"), seed=0, progress=False)
    assert history[0]["loss"] > without[0]["loss"]  # the named term is part of the loss
