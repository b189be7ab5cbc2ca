"""Quantisation-aware fine-tuning: the convs see the shipped int8 rounding, and training goes on."""

from __future__ import annotations

import torch
from torch import nn

from reid_models import quantize
from tests.test_pruning import trained_looking

H, W = 128, 64


def test_a_fake_quantised_conv_computes_the_conv_of_int8_weights_and_uint8_inputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    wrapped = quantize.FakeQuantConv(conv)
    inputs = torch.randn(2, 4, 8, 8).relu() + 0.1
    got = wrapped(inputs)  # first call: its range is observed from this batch
    scale = (inputs.max() - 0.0) / 255  # uint8, the range widened to hold 0
    rounded_inputs = torch.clamp(torch.round(inputs / scale), 0, 255) * scale
    weight_scale = conv.weight.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    rounded_weight = torch.clamp(torch.round(conv.weight / weight_scale), -127, 127) * weight_scale
    expected = nn.functional.conv2d(rounded_inputs, rounded_weight, conv.bias, padding=1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, conv(inputs), atol=1e-4)  # the rounding is really there


def test_prepared_model_stays_close_to_the_float_model_trains_and_strips_back_to_plain_convs():
    model = trained_looking("resnet18")
    prepared = quantize.prepare(model, H, W)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.backbone.modules())  # folded first
    images = torch.randn(4, 3, H, W)
    with torch.no_grad():
        prepared.eval()
        prepared(images)  # observe activation ranges
        cosine = nn.functional.cosine_similarity(prepared(images), model(images)).min()
    assert 0.95 < cosine < 1.0 - 1e-6  # rounded, but the same network

    prepared.train()
    conv = next(m for m in prepared.backbone.modules() if isinstance(m, quantize.FakeQuantConv))
    before = conv.conv.weight.detach().clone()
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.1)
    out = prepared(images)
    (out.features.pow(2).mean() + out.logits.pow(2).mean()).backward()  # gradients pass the rounding
    optimizer.step()
    assert conv.conv.weight.grad is not None and not torch.equal(conv.conv.weight.detach(), before)

    stripped = quantize.strip(prepared)
    assert not any(isinstance(m, quantize.FakeQuantConv) for m in stripped.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in stripped.modules()) == \
        sum(isinstance(m, nn.Conv2d) for m in model.modules())
