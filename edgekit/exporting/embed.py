"""A model that takes raw pixels: uint8 NHWC in, scaling and normalization inside the graph.

An edge app then only resizes and crops (``Preprocessing.geometry_transform``); it cannot get the mean,
std, channel order or value range wrong, because those live in the exported model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..preprocessing import Preprocessing, pixel_scale_shift


class EmbeddedPreprocessing(nn.Module):
    """``model`` behind (x / 255 - mean) / std, folded into one multiply-add, on a uint8 NHWC batch."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        scale, shift = pixel_scale_shift(preprocessing)
        # One Mul and one Add in the exported graph.
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", torch.from_numpy(scale))
        self.register_buffer("shift", torch.from_numpy(shift))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return self.model(images * self.scale + self.shift)
