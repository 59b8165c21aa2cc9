"""A small model with one layer that per-tensor int8 ruins: what every accuracy-aware fallback (ONNX Runtime,
ExecuTorch, OpenVINO) must find and keep in float. Trained on the real photo crops of conftest's photo_folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.data import load_batch
from edgekit.preprocessing import Preprocessing

PREPROCESSING = Preprocessing(resize=32, crop=32)


class OneSensitiveLayer(nn.Module):
    """A small CNN, trained on real photo crops, then rescaled so that conv3 sees a tensor with one huge channel
    (conv2's channel 0 times 2000, conv3's weights on it divided by 2000: the same function in float). Per-tensor
    uint8 activations then keep almost nothing of the other channels, unless conv3 is computed in float."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.conv2(x)  # no activation: the wide channel goes straight into conv3's input
        x = torch.relu(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))

    def make_sensitive(self, factor: float = 2000.0) -> "OneSensitiveLayer":
        with torch.no_grad():
            self.conv2.weight[0] *= factor
            self.conv2.bias[0] *= factor
            self.conv3.weight[:, 0] /= factor
        return self


def trained_sensitive_model(images: np.ndarray, labels: np.ndarray) -> OneSensitiveLayer:
    torch.manual_seed(0)
    model = OneSensitiveLayer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval().make_sensitive()


def sensitive_setup(photo_folders: tuple[Path, Path]) -> tuple[OneSensitiveLayer, np.ndarray, np.ndarray]:
    """(the trained sensitive model, its training crops as float NCHW, held-out crops to validate on)."""
    train, val = photo_folders
    train_paths = sorted(train.rglob("*.jpg"))
    train_images = load_batch(train_paths, PREPROCESSING)
    classes = sorted({p.parent.name for p in train_paths})
    labels = np.array([classes.index(p.parent.name) for p in train_paths])
    return trained_sensitive_model(train_images, labels), train_images, load_batch(sorted(val.rglob("*.jpg")), PREPROCESSING)
