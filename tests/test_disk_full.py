"""A full disk while writing a checkpoint or the results: a clear error that names the file, the
previous file intact, no temporary file left. The kernel's own ENOSPC comes from /dev/full, which
the temporary file of the atomic write is swapped for."""

from __future__ import annotations

import os
import tempfile

import pandas as pd
import pytest
import torch

from reid_models import checkpoint
from reid_models.checkpoint import DiskFullError, load_checkpoint, save_checkpoint, save_json
from tests.test_train import SETTINGS, tiny_train_set

REAL_MKSTEMP = tempfile.mkstemp
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")


@pytest.fixture
def full_disk(monkeypatch):
    """From now on, every atomic write's temporary file is /dev/full: each write fails with ENOSPC."""
    def mkstemp(prefix: str = "", suffix: str = "", dir: str | None = None):
        handle, path = REAL_MKSTEMP(prefix=prefix, suffix=suffix, dir=dir)  # the real temporary file
        os.close(handle)
        return os.open("/dev/full", os.O_WRONLY), path

    def start() -> None:
        monkeypatch.setattr(checkpoint.tempfile, "mkstemp", mkstemp)
    return start


@pytest.mark.parametrize("kind", ["checkpoint", "json"])
def test_a_full_disk_keeps_the_previous_file_and_says_what_to_do(tmp_path, full_disk, kind):
    path = tmp_path / ("model.pt" if kind == "checkpoint" else "result.json")
    write = (lambda v: save_checkpoint(path, {"state_dict": {"w": torch.full((4,), float(v))}})) \
        if kind == "checkpoint" else (lambda v: save_json(path, {"value": v}))
    write(1)
    before = path.read_bytes()
    full_disk()
    with pytest.raises(DiskFullError) as raised:
        write(2)
    message = str(raised.value)
    assert str(path) in message and f"the previous {path.name} is intact" in message
    assert "run the same command again" in message and not message.startswith("[Errno")
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    if kind == "checkpoint":
        assert load_checkpoint(path)["state_dict"]["w"][0] == 1.0


def test_a_full_disk_during_training_keeps_the_last_epoch(tiny_domains, tmp_path, full_disk):
    from reid_models.models import ReIDNet
    from reid_models.train import train_model

    images = tiny_train_set(tiny_domains)
    last = tmp_path / "last.pt"
    torch.manual_seed(0)
    model = ReIDNet("osnet_x0_25", int(images.labels.max()) + 1)
    # epoch 1's checkpoint is written, then the disk fills up before epoch 2's
    with pytest.raises(DiskFullError, match="last.pt"):
        train_model(model, images, SETTINGS, torch.device("cpu"), checkpoint_path=last,
                    on_epoch=lambda record: full_disk(), progress=False)
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_while_writing_the_results_keeps_the_last_ones(tmp_path, full_disk):
    from reid_models.report import plot_flops_vs_rank1

    plot = tmp_path / "flops_vs_rank1.png"
    frame = pd.DataFrame({"scenario": ["adapt_only", "prune_during"], "criterion": ["none", "plfp"],
                          "flops_reduction": [0.0, 0.5], "adaptation": ["supervised"] * 2, "seed": [0, 0],
                          "flops": [6e8, 3e8], "gflops": [0.6, 0.3], "rank1": [0.8, 0.7]})
    plot_flops_vs_rank1(frame, plot)
    before = plot.read_bytes()
    full_disk()
    with pytest.raises(DiskFullError, match="flops_vs_rank1.png"):
        plot_flops_vs_rank1(frame, plot)
    assert plot.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
