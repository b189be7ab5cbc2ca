"""Quantisation-aware fine-tuning that mirrors the int8 scheme the model is shipped in.

`reid_models.export.quantize_int8` ships a model as ONNX Runtime static int8: per-channel
symmetric int8 weights (scale = max |w| / 127 per output channel) and per-tensor uint8
activations (min/max calibrated on training images) at every conv input; it also rounds the
residual adds' outputs, which are the next convs' inputs, so rounding conv inputs mirrors most of it. Post-training, the
network meets that rounding for the first time at export. Here it meets it while it trains:

1. BatchNorm is folded into the convs first, as the exported graph has it, so the weights that
   are trained are the weights that are rounded.
2. Every conv rounds its weights and its input activations on the way forward, in the shipped
   scheme (`torch.fake_quantize_*`; gradients pass straight through the rounding). The
   activation range is a running min/max (momentum `ACTIVATION_MOMENTUM`) while training and
   frozen in eval mode, as calibration would give it.
3. After fine-tuning, `strip` puts plain convs back with the trained float weights, and the model
   is exported and quantised like any other (`export.quantize_int8`): its calibration then finds
   weights and ranges the network has learnt to live with.

Seed 001 (Saha et al.) trains with 8-bit weights the same way; torch.ao's QAT would need a
quantisation-ready network (explicit quant stubs and functional adds) and does not export to
ONNX Runtime's QDQ format cleanly, which is why the rounding is written out here.
"""

from __future__ import annotations

import torch
from torch import nn

from reid_models.complexity import fold_batchnorm
from reid_models.models import ReIDNet

ACTIVATION_MOMENTUM = 0.01


class FakeQuantConv(nn.Module):
    """A conv that sees its weights and input rounded to int8 / uint8 as the shipped model will."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("input_min", torch.tensor(float("inf")))
        self.register_buffer("input_max", torch.tensor(float("-inf")))

    @torch.no_grad()
    def _observe(self, inputs: torch.Tensor) -> None:
        low, high = inputs.min(), inputs.max()
        if torch.isinf(self.input_min):
            self.input_min.copy_(low)
            self.input_max.copy_(high)
        else:
            self.input_min.lerp_(low, ACTIVATION_MOMENTUM)
            self.input_max.lerp_(high, ACTIVATION_MOMENTUM)

    def _input_scale(self) -> tuple[float, int]:
        """uint8 affine: the range always holds 0, as ONNX Runtime's calibration makes it."""
        low, high = min(float(self.input_min), 0.0), max(float(self.input_max), 0.0)
        scale = max(high - low, 1e-8) / 255
        return scale, int(round(-low / scale))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training or torch.isinf(self.input_min):
            self._observe(inputs)
        scale, zero_point = self._input_scale()
        inputs = torch.fake_quantize_per_tensor_affine(inputs, scale, zero_point, 0, 255)
        weight = self.conv.weight
        weight_scale = weight.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-8) / 127
        weight = torch.fake_quantize_per_channel_affine(weight, weight_scale, torch.zeros_like(
            weight_scale, dtype=torch.int32), 0, -127, 127)
        return self.conv._conv_forward(inputs, weight, self.conv.bias)


def _replace(model: nn.Module, kind: type, make) -> int:
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, kind):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, make(module))
            replaced += 1
    return replaced


def prepare(model: ReIDNet, height: int, width: int) -> ReIDNet:
    """A copy of `model` with BatchNorm folded and every conv fake-quantised, ready to fine-tune."""
    folded = fold_batchnorm(model, height, width)
    if _replace(folded.backbone, nn.Conv2d, FakeQuantConv) == 0:
        raise ValueError(f"{model.backbone_name}: no conv to quantise")
    return folded


def strip(model: ReIDNet) -> ReIDNet:
    """The fine-tuned float network (plain convs with the trained weights), for export."""
    _replace(model.backbone, FakeQuantConv, lambda wrapped: wrapped.conv)
    return model


def finetune(model: nn.Module, train_set, settings, epochs: int, lr_scale: float, seed: int) -> None:
    """`epochs` more epochs of the target recipe (`adapt.train`, at `lr_scale` of its lr, no
    warm-up, the grid's batches per epoch) on `train_set`, on the CPU: QAT's budget, or the float
    control that gives post-training quantisation the same budget."""
    from reid_models.train import train_model

    recipe = settings.adapt.train.model_copy(update={
        "epochs": epochs, "warmup_epochs": 0, "lr": settings.adapt.train.lr * lr_scale,
        "batches_per_epoch": settings.scenarios.batches_per_epoch})
    train_model(model, train_set, recipe, torch.device("cpu"), seed=seed,
                backbone_lr_scale=settings.adapt.backbone_lr_scale, progress=False)


def quantization_aware(model: ReIDNet, train_set, settings, epochs: int, lr_scale: float, seed: int) -> ReIDNet:
    """`model` fine-tuned with the shipped int8 rounding in its forward pass (`prepare`,
    `finetune`, `strip`): a float network ready for `export.quantize_int8`."""
    prepared = prepare(model, settings.data.height, settings.data.width)
    finetune(prepared, train_set, settings, epochs, lr_scale, seed)
    return strip(prepared).eval()
