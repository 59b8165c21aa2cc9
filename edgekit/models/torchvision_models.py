"""torchvision classifiers. Adding one is a row naming it (as torchvision registers it), its head and its blocks;
torchvision's own registry (``get_model``, ``get_model_weights``) supplies the builder and the weights."""

from __future__ import annotations

from typing import Callable

from torch import nn
from torchvision import models as tvm

from ..preprocessing import from_torchvision_transforms
from .spec import ModelSpec, ParityTolerance


def _features(model: nn.Module) -> list[nn.Module]:
    return list(model.get_submodule("features").children())


def _resnet_blocks(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([model.get_submodule("conv1"), model.get_submodule("bn1")])
    return [stem, *(model.get_submodule(f"layer{i}") for i in range(1, 5))]


def _spec(name: str, head: str, blocks: Callable[[nn.Module], list[nn.Module]], **kwargs) -> ModelSpec:
    weights_enum = tvm.get_model_weights(name)
    preprocessing = from_torchvision_transforms(weights_enum.DEFAULT.transforms())
    return ModelSpec(
        name=name,
        family=name.split("_")[0] if not name.startswith("mobilenet") else "mobilenet_v3",
        build=lambda: tvm.get_model(name, weights=None),
        head=head,
        blocks=blocks,
        input_size=preprocessing.crop,
        weights_enum=weights_enum,
        preprocessing=preprocessing,
        **kwargs,
    )


# Depthwise/SE nets lose more under int8 than ResNets; their agreement floors are set lower. For fp16
# the flips are near-ties among 1000 ImageNet classes (Lite0 on real photo crops: 95.4% agreement at
# min cosine 0.9999), so a 0.98 floor would fail healthy fp16 exports of the pretrained heads.
_DEPTHWISE = ParityTolerance(fp16_min_agreement=0.95)

_HEADS = {
    "mobilenet_v3_small": "classifier.3",
    "mobilenet_v3_large": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "efficientnet_b1": "classifier.1",
    "efficientnet_b2": "classifier.1",
    "efficientnet_b3": "classifier.1",
}
_RESNETS = ("resnet18", "resnet34", "resnet50")


def specs() -> list[ModelSpec]:
    """The torchvision part of the zoo (registered by edgekit.models.registry)."""
    return [
        *(_spec(name, head, _features, parity=_DEPTHWISE) for name, head in _HEADS.items()),
        *(_spec(name, "fc", _resnet_blocks) for name in _RESNETS),
    ]
