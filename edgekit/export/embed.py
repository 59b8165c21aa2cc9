"""A model that takes raw pixels: uint8 NHWC in, scaling and normalization inside the graph.

An edge app then only resizes and crops (``Preprocessing.geometry_transform``); it cannot get the mean,
std, channel order or value range wrong, because those live in the exported model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..preprocessing import Preprocessing


class EmbeddedPreprocessing(nn.Module):
    """``model`` behind (x / 255 - mean) / std, folded into one multiply-add, on a uint8 NHWC batch."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        # x/255 - mean) / std == x * scale + shift: one Mul and one Add in the exported graph.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return self.model(images * self.scale + self.shift)


def example_pixels(preprocessing: Preprocessing, batch: int = 2) -> torch.Tensor:
    """A uint8 NHWC batch at the model's input size, for export."""
    return torch.randint(0, 256, (batch, preprocessing.crop, preprocessing.crop, 3), dtype=torch.uint8)


def normalize_pixels(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 NHWC pixels -> the float32 NCHW tensor the plain model takes, exactly as the embedded graph does."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = -mean / std
    return (pixels.transpose(0, 3, 1, 2).astype(np.float32) * scale + shift).astype(np.float32)
