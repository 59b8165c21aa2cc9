"""torchvision classifiers. Adding one is a register() call naming its builder, weights and head."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from ..preprocessing import from_torchvision_transforms
from .registry import ModelSpec, ParityTolerance, register


def _features(model: nn.Module) -> list[nn.Module]:
    return list(model.features.children())


def _resnet_blocks(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([model.conv1, model.bn1])
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def _spec(name, builder, weights_enum, head, blocks, **kwargs) -> ModelSpec:
    transforms = weights_enum.DEFAULT.transforms()
    preprocessing = from_torchvision_transforms(transforms)
    return ModelSpec(
        name=name,
        family=name.split("_")[0] if not name.startswith("mobilenet") else "mobilenet_v3",
        build=lambda: builder(weights=None),
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

for _name, _builder, _weights, _head in [
    ("mobilenet_v3_small", tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights, "classifier.3"),
    ("mobilenet_v3_large", tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights, "classifier.3"),
    ("efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights, "classifier.1"),
    ("efficientnet_b1", tvm.efficientnet_b1, tvm.EfficientNet_B1_Weights, "classifier.1"),
    ("efficientnet_b2", tvm.efficientnet_b2, tvm.EfficientNet_B2_Weights, "classifier.1"),
    ("efficientnet_b3", tvm.efficientnet_b3, tvm.EfficientNet_B3_Weights, "classifier.1"),
]:
    register(_spec(_name, _builder, _weights, _head, _features, parity=_DEPTHWISE))

for _name, _builder, _weights in [
    ("resnet18", tvm.resnet18, tvm.ResNet18_Weights),
    ("resnet34", tvm.resnet34, tvm.ResNet34_Weights),
    ("resnet50", tvm.resnet50, tvm.ResNet50_Weights),
]:
    register(_spec(_name, _builder, _weights, "fc", _resnet_blocks))
