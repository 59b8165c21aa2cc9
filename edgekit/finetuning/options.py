"""The fine-tune options model and the result/metrics records it writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..results import Result

# Default epochs per strategy when --epochs is not given; early stopping (--patience) usually ends sooner.
# Measured on digits (docs/results.md): partial and full reach their best val accuracy within 6-12 epochs.
DEFAULT_EPOCHS = {"head": 30, "partial": 20, "full": 20}


class FinetuneConfig(BaseModel):
    """Every fine-tune option; the CLI flags and ``--config`` YAML keys are these names."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "efficientnet_lite0"
    weights: str = "DEFAULT"
    data: Path
    val_data: Path | None = None
    val_split: float | None = Field(default=None, gt=0, lt=1)
    out: Path
    strategy: Literal["head", "partial", "full"] = "head"
    unfreeze: int = Field(default=2, ge=1, description="with strategy partial: how many of the last backbone blocks train")
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="epoch loop (partial, full, head with --no-cache-features): the most epochs; early stopping "
        "usually ends sooner. Default: 30 head, 20 partial/full. The cached-feature head solve has no epochs",
    )
    batch_size: int = Field(default=32, ge=1)
    lr: float | None = Field(
        default=None,
        gt=0,
        description="epoch loop: learning rate of the new head. Default by rule: adamw 1e-3 * sqrt(batch/32), "
        "sgd 0.01 * batch/32 (head-only loop: x3)",
    )
    l2: float | None = Field(
        default=None,
        ge=0,
        description="head solve on cached features: L2 strength (weight decay 1/(C*n) in scikit-learn's terms). "
        "Default: chosen on the validation split from a grid",
    )
    backbone_lr_scale: float = Field(default=0.1, gt=0, le=1, description="pretrained layers train at lr * this")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=1e-4, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    warmup_epochs: int = Field(default=1, ge=0)
    patience: int | None = Field(default=5, ge=1, description="stop after this many epochs without a better val accuracy")
    image_size: int | None = Field(default=None, ge=16, description="input size; default the weights' own")
    augment: bool = True
    cache_features: bool = Field(
        default=True,
        description="strategy head: run the frozen backbone once and solve the linear head on the features "
        "(L-BFGS to convergence); --no-cache-features trains it in an epoch loop that re-runs the backbone "
        "so augmentation applies",
    )
    cache: bool = Field(
        default=True, description="keep extracted features on disk and reuse them; --no-cache extracts afresh and stores nothing"
    )
    cache_dir: Path | None = Field(
        default=None,
        description="feature cache folder; default $EDGEKIT_CACHE_DIR, else $XDG_CACHE_HOME/edgekit/features, else ~/.cache/edgekit/features",
    )
    feature_runtime: Literal["auto", "ort", "torch"] = Field(
        default="auto",
        description="what extracts head features: ort (ONNX Runtime fp32, CPU), torch (eager; AMP/channels_last on "
        "CUDA); auto: torch on CUDA, ort on CPU from 256 images on (export costs more than it saves below)",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    num_workers: int = Field(default=0, ge=0)
    skip_bad_images: bool = False
    resume: bool = False

    @model_validator(mode="after")
    def _check(self):
        if self.val_data is not None and self.val_split is not None:
            raise ValueError("pass either val_data or val_split, not both")
        if self.strategy != "partial" and "unfreeze" in self.model_fields_set:
            raise ValueError("unfreeze applies only to strategy 'partial'")
        if self.l2 is not None and not self.solves_head:
            raise ValueError("l2 applies only to strategy 'head' with cached features; the epoch loop uses weight_decay")
        return self

    @property
    def solves_head(self) -> bool:
        """Head-only on cached features: a convex problem, solved rather than trained."""
        return self.strategy == "head" and self.cache_features

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.strategy]

    def resolved_lr(self, world_size: int = 1) -> float:
        """--lr, or the documented rule: the global batch (batch_size x world_size) against a reference of 32;
        square-root scaling for AdamW, linear scaling for SGD (Goyal et al. 2017); the head-only epoch loop
        (nothing pretrained moves) takes 3x."""
        if self.lr is not None:
            return self.lr
        ratio = self.batch_size * world_size / 32
        lr = 1e-3 * math.sqrt(ratio) if self.optimizer == "adamw" else 1e-2 * ratio
        return lr * 3 if self.strategy == "head" else lr


class EpochMetrics(BaseModel):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float | None  # None for the head solve (no learning rate)
    seconds: float
    images_per_second: float


class HeadCandidate(BaseModel):
    l2: float
    c: float | None  # scikit-learn's C for the same objective: 1 / (l2 * n_train); None for l2 0
    iterations: int
    train_loss: float
    val_loss: float
    val_accuracy: float


class HeadSolve(BaseModel):
    """How the linear head was fitted on cached features (strategy head)."""

    solver: str = "lbfgs"
    objective: str = "mean cross-entropy + l2/2 * ||W||^2 (bias not penalized; no label smoothing)"
    l2: float
    c: float | None
    chosen_by: Literal["validation grid", "--l2"]
    iterations: int
    converged: bool
    gradient_norm: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    grid: list[HeadCandidate] = []


class FeatureInfo(BaseModel):
    """Where the head's features came from."""

    runtime: str  # "ort-cpu", "torch-cpu", "torch-cuda-amp-bf16", ...
    cache_key: str | None  # None with --no-cache
    cache_dir: str | None
    images: int
    extracted: int  # images run through the backbone now; 0 means every feature came from the cache
    seconds: float
    images_per_second: float | None  # extraction throughput (None when nothing was extracted)
    ort_vs_torch_min_cosine: float | None = None  # measured once per cached ONNX backbone, on a few real images
    ort_vs_torch_images: int | None = None


class Metrics(Result):
    epochs: list[EpochMetrics] = []
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    world_size: int = 1
    head_solve: HeadSolve | None = None
    features: FeatureInfo | None = None


class FinetuneResult(Result):
    run_dir: str
    model: str
    strategy: str
    device: str
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    train_images: int
    val_images: int
    skipped_images: list[str] = []
    seconds: float
    images_per_second: float  # training throughput over the whole run (cached-feature epochs for strategy head)
    world_size: int = 1
    head_solve: HeadSolve | None = None
    features: FeatureInfo | None = None
