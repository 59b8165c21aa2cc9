"""Fine-tuning: the head solved on cached features, partial or full in an epoch loop with resume and
early stopping, data-parallel under torchrun.

    options.py      FinetuneConfig (flags and YAML keys), the metrics and result records
    head.py         the linear head as a convex problem: L-BFGS, L2 chosen on the validation split
    features.py     frozen-backbone features: ORT / torch extraction, the on-disk cache
    trainer.py      the run: head solve or epoch loop, checkpoints, reports
    distributed.py  torchrun / DDP plumbing
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import scan_folder, stratified_split
from ..errors import ConfigError, EdgekitError
from ..models import build
from ..progress import note
from ..runs import CARD_NAME, RunCard, library_versions
from . import distributed
from .options import EpochMetrics, FeatureInfo, FinetuneConfig, FinetuneResult, HeadSolve, Metrics
from .trainer import CHECKPOINT_NAME, _seed_everything, _Trainer

__all__ = ["finetune", "FinetuneConfig", "FinetuneResult", "EpochMetrics", "Metrics", "HeadSolve", "FeatureInfo"]


def finetune(config: FinetuneConfig | None = None, progress: bool = False, **options) -> FinetuneResult | None:
    """Fine-tune ``config.model`` on an image folder and write a run directory to ``config.out``.

    Under torchrun (WORLD_SIZE > 1) strategies partial and full train data-parallel and every rank
    returns the same result; strategy head with cached features needs no scale-out, so rank 0 solves
    it alone and the other ranks return None at once.
    """
    if config is None:
        from ..config import validate

        config = validate(FinetuneConfig, options, "finetune options")
    context = distributed.from_environment()
    if context.enabled and config.solves_head and not context.is_main:
        note(f"rank {context.rank}: strategy head on cached features needs no scale-out; rank 0 solves it alone", progress)
        return None
    if config.solves_head:
        context = distributed.Distributed()  # rank 0 of a torchrun job works as a single process
    out = Path(config.out)
    device = _pick_device(config.device)
    if context.enabled:
        device = distributed.init(context, device)
    try:
        return _finetune(config, context, device, out, progress)
    finally:
        if context.enabled:
            distributed.shutdown()


def _finetune(config: FinetuneConfig, context, device, out: Path, progress: bool) -> FinetuneResult:
    _check_out_dir(out, config.resume)
    distributed.barrier(context)  # every rank has looked at --out before rank 0 writes anything there

    # Data: classes from folder names; val from its own folder or a stratified split.
    show = progress and context.is_main
    train = scan_folder(config.data, skip_bad_images=config.skip_bad_images, progress=show)
    if config.val_data is not None:
        val = scan_folder(config.val_data, classes=train.classes, skip_bad_images=config.skip_bad_images, progress=show)
    else:
        train, val = stratified_split(train, config.val_split or 0.2, config.seed)
    skipped = [str(p) for p, _ in train.skipped + (val.skipped if config.val_data else [])]

    _seed_everything(config.seed, 0)
    model, loaded = build(config.model, config.weights, num_classes=len(train.classes))
    preprocessing = loaded.preprocessing if config.image_size is None else loaded.preprocessing.resized(config.image_size)
    card = RunCard(
        model=config.model,
        weights=loaded.source,
        class_names=train.classes,
        preprocessing=preprocessing,
        strategy=config.strategy,
        data_fingerprint=train.fingerprint(),
        data_dir=str(Path(config.data).resolve()),
        val_dir=str(Path(config.val_data or config.data).resolve()),
        val_split=None if config.val_data else (config.val_split or 0.2),
        seed=config.seed,
        device=str(device) if not context.enabled else f"{device.type} x{context.world_size} (DDP)",
        world_size=context.world_size if context.enabled else 1,
        versions=library_versions(),
    )
    trainer = _Trainer(config, model, card, train, val, device, progress, context)
    started = time.perf_counter()
    history, stopped_early = trainer.run()
    best = max(history, key=lambda m: (m.val_accuracy, -m.epoch))
    total_images = sum(m.images_per_second * m.seconds for m in history)
    total_seconds = sum(m.seconds for m in history)
    if context.is_main:
        (out / CHECKPOINT_NAME).unlink(missing_ok=True)  # finished: the resume state is no longer needed
    return FinetuneResult(
        run_dir=str(out),
        model=config.model,
        strategy=config.strategy,
        device=card.device,
        epochs_run=len(history),
        best_epoch=best.epoch,
        best_val_accuracy=best.val_accuracy,
        stopped_early=stopped_early,
        train_images=len(train),
        val_images=len(val),
        skipped_images=skipped,
        seconds=round(time.perf_counter() - started, 3),
        images_per_second=round(total_images / total_seconds, 1) if total_seconds else 0.0,
        world_size=context.world_size,
        head_solve=trainer.head_solve,
        features=trainer.feature_info,
    )


def _check_out_dir(out: Path, resume: bool) -> None:
    has_run = (out / CARD_NAME).exists() or (out / CHECKPOINT_NAME).exists()
    if resume and not (out / CHECKPOINT_NAME).exists():
        done = " (it already finished)" if (out / CARD_NAME).exists() else ""
        raise EdgekitError(f"nothing to resume in {out}{done}: no {CHECKPOINT_NAME}; run without --resume")
    if not resume and has_run:
        raise EdgekitError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")


def _pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)
