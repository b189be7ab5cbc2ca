"""What shipping a model costs beyond scoring it: the estimate's `EXPORT_IMAGES`.

    python -m bench.ship_cost outputs/full/scenarios/prune_during-plfp-0.5-supervised-seed0/model.pt

Times, at one torch thread (a scenario worker's), the parts of `reid_models.shipping.ship_scenario`
that do not scale with the test images: the ONNX export and its check, int8 calibration on 300
training images, and MLflow's onnx flavour; then probes inference speed at one thread and prints
the cost as the inference images it takes as long as (how `reid_models.estimate` prices it).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    import mlflow.onnx
    import onnx

    from reid_models import export as exporting
    from reid_models import shipping
    from reid_models.checkpoint import load_checkpoint
    from reid_models.config import load_settings
    from reid_models.speed_probe import probe_speed
    from reid_models.stages import model_from_payload

    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        sys.exit(__doc__)
    torch.set_num_threads(1)
    checkpoint = sys.argv[1]
    payload = load_checkpoint(checkpoint)
    model = model_from_payload(payload, checkpoint)
    images = shipping.domain_training_images(payload, shipping.model_domain(payload), 16 + 300)
    height, width = images.shape[-2:]
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        exporting.export_model(model, checkpoint, Path(scratch), height, width, images[:16], images[16:])
        exported = time.perf_counter()
        mlflow.onnx.save_model(onnx.load(Path(scratch) / "model.onnx"), Path(scratch) / "flavour",
                               save_as_external_data=False, pip_requirements=["onnx"])
        done = time.perf_counter()
    speed = probe_speed(load_settings("params.yaml"), 8.0, threads=1)["inference_images_per_s"]
    print(f"export + check + int8: {exported - began:.1f} s, MLflow onnx flavour: {done - exported:.1f} s; "
          f"inference {speed:.0f} images/s at 1 thread: {(done - began) * speed:.0f} image-equivalents")


if __name__ == "__main__":
    main()
