"""How fast this machine trains and runs the default network: the figure every timing is given with.

Machines of the same nominal kind differ up to 3x, so a duration means little without the speed of
the machine it came from. The probe times what the pipeline spends its time on: training steps
(forward, ReID loss, backward, optimizer step) of the pretraining network at the pretraining
batch and image size, and eval-mode feature extraction, each for a few seconds after a warm-up.
"""

from __future__ import annotations

import time

import torch

from reid_models.config import Settings
from reid_models.models import ReIDNet
from reid_models.train import reid_loss


def _images_per_second(step, batch: int, seconds: float) -> float:
    step()  # warm-up: allocations, kernel choice
    done, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds or done == 0:
        step()
        done += batch
    return done / elapsed


def probe_speed(settings: Settings, seconds: float = 10.0, threads: int | None = None) -> dict:
    """Training and inference images/s of `pretrain.model` at `data.height x data.width` on the CPU,
    random weights and images (speed does not depend on them), `threads` torch threads (default:
    the current setting). Half of `seconds` each."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        recipe = settings.pretrain
        batch = recipe.ids_per_batch * recipe.images_per_id
        height, width = settings.data.height, settings.data.width
        torch.manual_seed(0)
        model = ReIDNet(recipe.model, num_classes=recipe.ids_per_batch * 4)
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        images = torch.randn(batch, 3, height, width)
        labels = torch.arange(recipe.ids_per_batch).repeat_interleave(recipe.images_per_id)

        def train_step() -> None:
            model.train()
            loss = reid_loss(model(images), labels, recipe)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def inference_step() -> None:
            model.eval()
            model(images)

        return {"model": recipe.model, "height": height, "width": width, "batch": batch,
                "threads": torch.get_num_threads(),
                "train_images_per_s": _images_per_second(train_step, batch, seconds / 2),
                "inference_images_per_s": _images_per_second(inference_step, batch, seconds / 2)}
    finally:
        torch.set_num_threads(previous)
