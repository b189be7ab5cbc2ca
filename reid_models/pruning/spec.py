"""Pruned architectures as a small JSON spec, so a pruned checkpoint is weights + text.

The spec lists the shape of every conv, BatchNorm and linear layer of the network. Rebuilding
starts from the base model (by name, random weights) and swaps each listed layer for one of the
recorded shape; the state_dict then loads into it. No pickled modules are stored, so pruned
checkpoints still load with `weights_only=True`, and a spec that does not fit the weights fails
with the name of the layer.
"""

from __future__ import annotations

from torch import nn

from reid_models.checkpoint import CheckpointError
from reid_models.models import ReIDNet

SPEC_VERSION = 1


def _layer_shape(module: nn.Module) -> dict | None:
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "groups": module.groups}
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"type": type(module).__name__, "num_features": module.num_features}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features}
    return None


def architecture_spec(model: ReIDNet) -> dict:
    layers = {name: shape for name, module in model.named_modules() if (shape := _layer_shape(module))}
    return {"version": SPEC_VERSION, "base": model.backbone_name, "num_classes": model.classifier.out_features,
            "feature_dim": model.neck.num_features, "layers": layers}


def _resized(module: nn.Module, shape: dict, name: str) -> nn.Module:
    kind = type(module).__name__
    if shape.get("type") != kind:
        raise CheckpointError(f"architecture spec: layer {name} is a {kind} in {shape}; the spec is for another model")
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(shape["in_channels"], shape["out_channels"], module.kernel_size, module.stride,
                         module.padding, module.dilation, shape["groups"], module.bias is not None,
                         module.padding_mode)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(module)(shape["num_features"], module.eps, module.momentum, module.affine,
                            module.track_running_stats)
    return nn.Linear(shape["in_features"], shape["out_features"], bias=module.bias is not None)


def build_from_spec(spec: dict) -> ReIDNet:
    """A network with the spec's shapes (random weights): load the pruned state_dict into it."""
    if spec.get("version") != SPEC_VERSION:
        raise CheckpointError(f"architecture spec version {spec.get('version')!r} is not {SPEC_VERSION}")
    model = ReIDNet(spec["base"], num_classes=spec["num_classes"])
    modules = dict(model.named_modules())
    for name, shape in spec["layers"].items():
        if name not in modules:
            raise CheckpointError(f"architecture spec names layer {name}, which a {spec['base']} does not have")
        parent_name, _, attribute = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attribute, _resized(modules[name], shape, name))
    model.feature_dim = spec["feature_dim"]
    return model


def load_into(model: nn.Module, state_dict: dict, source: str) -> None:
    """load_state_dict, but a mismatch names the first layer that does not fit."""
    own = model.state_dict()
    for key, value in state_dict.items():
        if key not in own:
            raise CheckpointError(f"{source}: weight {key} has no place in the model (another architecture?)")
        if own[key].shape != value.shape:
            raise CheckpointError(f"{source}: layer {key.rsplit('.', 1)[0]} expects {tuple(own[key].shape)} "
                                  f"but the checkpoint has {tuple(value.shape)}; spec and weights disagree")
    missing = sorted(set(own) - set(state_dict))
    if missing:
        raise CheckpointError(f"{source}: weights missing for {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict(state_dict)
