"""The evaluation preprocessing a model expects, recorded once (run card, ONNX metadata) and reused
everywhere (predict, parity, bench), so no step can normalize differently from another."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(BaseModel):
    """Resize the short side to ``resize``, center-crop ``crop``, scale to [0, 1], normalize."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Bounded so a crafted run card or ONNX metadata cannot ask for a billion-pixel resize.
    resize: int = Field(gt=0, le=8192)
    crop: int = Field(gt=0, le=8192)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    layout: Literal["NCHW"] = "NCHW"

    @classmethod
    def for_size(cls, crop: int, **kwargs) -> "Preprocessing":
        """The usual ImageNet recipe at another input size: resize = crop / 0.875."""
        return cls(resize=round(crop / 0.875), crop=crop, **kwargs)

    def resized(self, crop: int) -> "Preprocessing":
        """The same normalization at another input size, keeping the resize/crop ratio."""
        return self.model_copy(update={"crop": crop, "resize": max(crop, round(crop * self.resize / self.crop))})

    def transform(self):
        """The torchvision transform: PIL RGB image -> float tensor CHW."""
        from torchvision.transforms import v2 as T

        return T.Compose(
            [
                T.ToImage(),
                T.Resize(self.resize, interpolation=_interpolation(self.interpolation), antialias=True),
                T.CenterCrop(self.crop),
                T.ToDtype(__import__("torch").float32, scale=True),
                T.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def train_transform(self):
        """Standard light augmentation for training only: random resized crop and horizontal flip."""
        import torch
        from torchvision.transforms import v2 as T

        return T.Compose(
            [
                T.ToImage(),
                T.RandomResizedCrop(self.crop, scale=(0.6, 1.0), interpolation=_interpolation(self.interpolation), antialias=True),
                T.RandomHorizontalFlip(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def geometry_transform(self):
        """Resize and crop only, to a uint8 HWC array: the input of an embedded-preprocessing model."""
        from torchvision.transforms import v2 as T

        resize_crop = T.Compose(
            [T.Resize(self.resize, interpolation=_interpolation(self.interpolation), antialias=True), T.CenterCrop(self.crop)]
        )
        return lambda image: np.asarray(resize_crop(image), dtype=np.uint8)


def pixel_scale_shift(preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(x / 255 - mean) / std == x * scale + shift: the (1, 3, 1, 1) float32 scale and shift for 0..255 pixels.

    One formula for the graph (export/embed.py folds it into one Mul and one Add) and for host-side
    normalization (``normalize_pixels``), so the two cannot drift apart."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def normalize_pixels(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 NHWC pixels -> the float32 NCHW tensor the plain model takes, exactly as the embedded graph does."""
    scale, shift = pixel_scale_shift(preprocessing)
    return (pixels.transpose(0, 3, 1, 2).astype(np.float32) * scale + shift).astype(np.float32)


def example_pixels(preprocessing: Preprocessing, batch: int = 2):
    """A random uint8 NHWC torch batch at the model's input size, for exporting an embedded-preprocessing model."""
    import torch

    return torch.randint(0, 256, (batch, preprocessing.crop, preprocessing.crop, 3), dtype=torch.uint8)


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}[name]


def from_torchvision_transforms(transforms) -> Preprocessing:
    """Read resize/crop/mean/std/interpolation off a torchvision ``ImageClassification`` preset."""
    return Preprocessing(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        interpolation=transforms.interpolation.value,
    )
