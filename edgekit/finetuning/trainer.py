"""One fine-tune run: the head solve on cached features, or the epoch loop (partial, full, head without
cached features), single-process or one rank of a torchrun job."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from .. import files
from ..data import ImageFolder, TorchImageDataset
from ..display import styled
from ..errors import ConfigError, EdgekitError, first_line
from ..models import get_spec
from ..models.build import get_submodule, set_submodule
from ..progress import Bar, note
from ..runs import save_run
from . import distributed
from .features import FeatureExtractor, _OrtMismatch, default_cache_dir, pick_runtime
from .head import solve_linear_head
from .options import EpochMetrics, FinetuneConfig, HeadSolve, Metrics

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"


def _seed_everything(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed every RNG from (seed, epoch, rank), so a resumed run replays exactly the epochs it missed
    (rank 0 of a torchrun job seeds exactly like a single process; other ranks augment differently)."""
    value = (seed * 1_000_003 + epoch + rank * 7_919) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    generator = torch.Generator()
    generator.manual_seed(value)
    return generator


class _Trainer:
    """One training run. Kept in a class because the strategies share set-up, checkpoints and reports."""

    def __init__(
        self,
        config: FinetuneConfig,
        model,
        card,
        train: ImageFolder,
        val: ImageFolder,
        device,
        progress,
        context: distributed.Distributed = distributed.Distributed(),
    ):
        self.config, self.model, self.card = config, model, card
        self.train_folder, self.val_folder = train, val
        self.device, self.context = device, context
        self.progress = progress and context.is_main
        self.spec = get_spec(config.model)
        self.out = Path(config.out)
        self.head = cast(nn.Linear, get_submodule(model, self.spec.head))  # every zoo head is a Linear (ModelSpec.head)
        self.amp_dtype = None
        if device.type == "cuda" and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.memory_format = torch.channels_last if (device.type == "cuda" and config.channels_last) else torch.contiguous_format
        self.epochs = config.resolved_epochs()
        self.lr = config.resolved_lr(context.world_size)
        self.head_solve: HeadSolve | None = None
        self.feature_info = None
        self.forward_model = model  # the DDP wrapper under torchrun

    # ---- set-up -------------------------------------------------------------------------------
    def _trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Module]]:
        """(head-region params at lr, pretrained params at lr * scale, frozen modules kept in eval)."""
        strategy = self.config.strategy
        for parameter in self.model.parameters():
            parameter.requires_grad = False
        head_params = list(self.head.parameters())
        if strategy == "head":
            for parameter in head_params:
                parameter.requires_grad = True
            return head_params, [], []
        blocks = self.spec.blocks(self.model)
        block_params = {id(p) for block in blocks for p in block.parameters()}
        head_ids = {id(p) for p in head_params}
        # Layers outside every block and not the head (e.g. MobileNetV3's first classifier Linear)
        # are pretrained but sit on top of the backbone; they train with the unfrozen blocks.
        loose = [p for p in self.model.parameters() if id(p) not in block_params and id(p) not in head_ids]
        n_train = len(blocks) if strategy == "full" else min(self.config.unfreeze, len(blocks))
        if strategy == "partial" and self.config.unfreeze > len(blocks):
            raise ConfigError(
                f"--unfreeze {self.config.unfreeze} is more than the {len(blocks)} blocks of {self.spec.name}; use at most {len(blocks)}"
            )
        trainable_blocks = blocks[len(blocks) - n_train :]
        frozen_blocks = blocks[: len(blocks) - n_train]
        pretrained = loose + [p for block in trainable_blocks for p in block.parameters()]
        for parameter in head_params + pretrained:
            parameter.requires_grad = True
        return head_params, pretrained, frozen_blocks

    def _optimizer(self, head_params, pretrained):
        groups = [{"params": head_params, "lr": self.lr}]
        if pretrained:
            groups.append({"params": pretrained, "lr": self.lr * self.config.backbone_lr_scale})
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(groups, momentum=0.9, weight_decay=self.config.weight_decay, nesterov=True)
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def _scheduler(self, optimizer, steps_per_epoch: int):
        warmup = self.config.warmup_epochs * steps_per_epoch
        total = max(1, self.epochs * steps_per_epoch)

        def factor(step: int) -> float:  # linear warm-up, then cosine to zero
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _load_checkpoint(self, optimizer=None, scheduler=None) -> int:
        checkpoint = self.out / CHECKPOINT_NAME
        state = files.load_torch(checkpoint)
        try:
            self.model.load_state_dict(state["model"])
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            return int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise EdgekitError(
                f"{checkpoint} does not fit this run ({type(exc).__name__}: {first_line(exc, 120)}); "
                "resume with the same model and options, or delete it and start again"
            ) from exc

    # ---- the head solve -----------------------------------------------------------------------
    def _solve(self) -> tuple[list[EpochMetrics], bool]:
        """Head-only on cached features: extract (or reuse) features, solve the head, write the run."""
        self._trainable()
        self.model.to(self.device)
        if self.config.resume:
            self._load_checkpoint()  # the solve is deterministic: resuming redoes it, on cached features
        else:
            # A checkpoint of the starting state: a run killed during extraction is resumable, not half-new.
            self._save_checkpoint(0, None, None)
        train_x, train_y, val_x, val_y = self._head_features()
        weight, bias, solve = solve_linear_head(train_x, train_y, val_x, val_y, self.card.num_classes, l2=self.config.l2)
        with torch.no_grad():
            self.head.weight.copy_(weight.to(self.head.weight.device))
            self.head.bias.copy_(bias.to(self.head.bias.device))
        self.head_solve = solve
        metrics = EpochMetrics(
            epoch=1,
            train_loss=solve.train_loss,
            train_accuracy=solve.train_accuracy,
            val_loss=solve.val_loss,
            val_accuracy=solve.val_accuracy,
            lr=None,
            seconds=solve.seconds,
            images_per_second=round(len(train_x) / solve.seconds, 1) if solve.seconds else 0.0,
        )
        save_run(self.out, self.card, self._cpu_state())
        self._write_metrics([metrics], 1, metrics.val_accuracy)
        self._report(metrics, True)
        return [metrics], False

    @torch.no_grad()
    def _head_features(self):
        paths = [p for p, _ in self.train_folder.samples] + [p for p, _ in self.val_folder.samples]
        labels = np.asarray([y for _, y in self.train_folder.samples] + [y for _, y in self.val_folder.samples], dtype=np.int64)
        runtime = pick_runtime(self.config.feature_runtime, self.device, len(paths), self.amp_dtype)
        cache_dir = None
        if self.config.cache:
            cache_dir = Path(self.config.cache_dir).expanduser() if self.config.cache_dir is not None else default_cache_dir()
        set_submodule(self.model, self.spec.head, nn.Identity())
        try:
            try:
                features, info = self._extractor(runtime, cache_dir).features(paths)
            except _OrtMismatch as exc:
                note(f"{exc}; extracting with torch eager instead", self.progress)
                features, info = self._extractor("torch-cpu", cache_dir).features(paths)
        finally:
            set_submodule(self.model, self.spec.head, self.head)
        self.feature_info = info
        if info.extracted == 0:
            source = f"all {info.images} from the feature cache {cache_dir / info.cache_key}"
        else:
            reused = info.images - info.extracted
            source = (
                f"{info.extracted} extracted with {info.runtime} at {info.images_per_second:.0f} img/s"
                + (f", {reused} from the feature cache" if reused else "")
                + (f"; cached in {cache_dir / info.cache_key}" if cache_dir is not None else " (--no-cache: not stored)")
            )
        parity = f"; ORT vs torch: 1 - cosine <= {1 - info.ort_vs_torch_min_cosine:.1e}" if info.ort_vs_torch_min_cosine is not None else ""
        note(f"features: {source}{parity}", self.progress)
        n_train = len(self.train_folder)
        return features[:n_train], labels[:n_train], features[n_train:], labels[n_train:]

    def _extractor(self, runtime: str, cache_dir):
        return FeatureExtractor(
            self.model,
            model=self.config.model,
            weights=self.card.weights,
            preprocessing=self.card.preprocessing,
            device=self.device,
            runtime=runtime,
            cache_dir=cache_dir,
            num_workers=self.config.num_workers,
            amp_dtype=self.amp_dtype,
            channels_last=self.config.channels_last,
            progress=self.progress,
        )

    # ---- the epoch loop -----------------------------------------------------------------------
    def run(self) -> tuple[list[EpochMetrics], bool]:
        if self.config.solves_head:
            return self._solve()
        head_params, pretrained, frozen_blocks = self._trainable()
        self.frozen_blocks = frozen_blocks
        self.model.to(self.device, memory_format=self.memory_format)
        if self.context.enabled:
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        per_rank = self._shard_size(len(self.train_folder))
        steps = per_rank // self.config.batch_size if self._lone_last_batch(per_rank) else math.ceil(per_rank / self.config.batch_size)
        optimizer = self._optimizer(head_params, pretrained)
        scheduler = self._scheduler(optimizer, steps)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        criterion = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)

        history: list[EpochMetrics] = []
        start_epoch = 1
        best_accuracy, best_epoch = -1.0, 0
        if self.config.resume:
            start_epoch = self._load_checkpoint(optimizer, scheduler) + 1
            if start_epoch > 1:  # epoch 0 is the state before any training: no metrics yet
                history = [EpochMetrics.model_validate(m) for m in Metrics.from_json(self.out / METRICS_NAME).model_dump()["epochs"]]
                history = history[: start_epoch - 1]
            if history:
                best = max(history, key=lambda m: (m.val_accuracy, -m.epoch))
                best_accuracy, best_epoch = best.val_accuracy, best.epoch
        else:
            # An epoch-0 checkpoint: a run killed during its first epoch (after model.pt and the card of a
            # first improvement, say) can still be resumed instead of being neither new nor resumable.
            self._save_checkpoint(0, optimizer, scheduler)

        stopped_early = False
        for epoch in range(start_epoch, self.epochs + 1):
            generator = _seed_everything(self.config.seed, epoch, self.context.rank)
            started = time.perf_counter()
            train_loss, train_accuracy, n_images = self._train_epoch(epoch, optimizer, scheduler, scaler, criterion, generator)
            distributed.broadcast_buffers(self.model, self.context)
            seconds = time.perf_counter() - started
            val_loss, val_accuracy = self._evaluate(criterion)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=round(train_loss, 6),
                train_accuracy=round(train_accuracy, 6),
                val_loss=round(val_loss, 6),
                val_accuracy=round(val_accuracy, 6),
                lr=optimizer.param_groups[0]["lr"],
                seconds=round(seconds, 3),
                images_per_second=round(n_images / seconds, 1) if seconds else 0.0,
            )
            history.append(metrics)
            improved = val_accuracy > best_accuracy
            if improved:
                best_accuracy, best_epoch = val_accuracy, epoch
                # The best weights and their card are written whenever they improve, atomically,
                # so a run killed later still leaves a complete, usable run directory.
                if self.context.is_main:
                    save_run(self.out, self.card, self._cpu_state())
            self._write_metrics(history, best_epoch, best_accuracy)
            self._save_checkpoint(epoch, optimizer, scheduler)
            self._report(metrics, improved)
            if self.config.patience and epoch - best_epoch >= self.config.patience:
                stopped_early = True
                break
        distributed.barrier(self.context)  # every rank's last epoch is done before rank 0 removes the checkpoint
        return history, stopped_early

    def _write_metrics(self, history, best_epoch, best_accuracy) -> None:
        if self.context.is_main:
            Metrics(
                epochs=history,
                best_epoch=best_epoch,
                best_val_accuracy=best_accuracy,
                world_size=self.context.world_size,
                head_solve=self.head_solve,
                features=self.feature_info,
            ).to_json(self.out / METRICS_NAME)

    def _save_checkpoint(self, epoch: int, optimizer, scheduler) -> None:
        if not self.context.is_main:
            return
        files.save_torch(
            self.out / CHECKPOINT_NAME,
            {
                "epoch": epoch,
                "model": self._cpu_state(),
                "optimizer": optimizer.state_dict() if optimizer is not None else {},
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
            },
        )

    def _cpu_state(self) -> dict:
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()}

    def _report(self, metrics: EpochMetrics, improved: bool) -> None:
        if self.head_solve is not None:
            solve = self.head_solve
            c = f" (C={solve.c:.3g})" if solve.c is not None else ""
            note(
                f"head solved by L-BFGS: l2 {solve.l2:.3g}{c} by {solve.chosen_by}, {solve.iterations} iterations"
                f"{'' if solve.converged else ' (not converged)'}, {solve.seconds:.1f} s  train loss {solve.train_loss:.4f} "
                f"acc {solve.train_accuracy:.3f}  val loss {solve.val_loss:.4f} acc {solve.val_accuracy:.3f}",
                enabled=self.progress,
            )
            return
        note(
            styled(
                f"epoch {metrics.epoch}/{self.epochs}  train loss {metrics.train_loss:.4f} acc {metrics.train_accuracy:.3f}  "
                f"val loss {metrics.val_loss:.4f} acc {metrics.val_accuracy:.3f}  {metrics.images_per_second:.0f} img/s",
                (" best" if improved else "", "green"),
            ),
            enabled=self.progress,
        )

    def _shard_size(self, images: int) -> int:
        return math.ceil(images / self.context.world_size)  # DistributedSampler pads every rank to this

    def _loader(self, folder: ImageFolder, train: bool, generator=None, epoch: int = 0):
        preprocessing = self.card.preprocessing
        transform = preprocessing.train_transform() if (train and self.config.augment) else preprocessing.transform()
        dataset = TorchImageDataset(folder, transform)
        sampler: torch.utils.data.DistributedSampler | None = None
        if self.context.enabled and train:
            sampler = torch.utils.data.DistributedSampler(
                dataset,
                num_replicas=self.context.world_size,
                rank=self.context.rank,
                shuffle=True,
                seed=self.config.seed,
            )
            sampler.set_epoch(epoch)
        elif self.context.enabled:
            # Validation: disjoint shards without DistributedSampler's padding, so the summed metrics are exact.
            dataset = TorchImageDataset(folder.subset(range(self.context.rank, len(folder), self.context.world_size)), transform)
        per_rank = self._shard_size(len(folder)) if sampler is not None else len(dataset)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator if sampler is None else None,
            # A lone last image in train mode makes BatchNorm fail ("more than 1 value per channel"): drop it.
            drop_last=train and self._lone_last_batch(per_rank),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _lone_last_batch(self, images: int) -> bool:
        return images > 1 and images % self.config.batch_size == 1

    def _set_train_mode(self) -> None:
        self.model.train()
        for block in self.frozen_blocks:
            block.eval()  # frozen BatchNorm keeps its pretrained running statistics

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_epoch(self, epoch, optimizer, scheduler, scaler, criterion, generator):
        total_loss, correct, count = 0.0, 0.0, 0.0
        if self.config.strategy == "head":
            self.model.eval()  # frozen backbone: BatchNorm statistics and dropout as when features are cached
            self.head.train()
        else:
            self._set_train_mode()
        batches = self._loader(self.train_folder, True, generator, epoch)
        with Bar(self.progress) as bar:
            bar.begin(len(batches), f"epoch {epoch}/{self.epochs}")
            started = time.perf_counter()
            for inputs, targets in batches:
                batch_loss, batch_correct = self._train_step(inputs, targets, optimizer, scheduler, scaler, criterion)
                total_loss += batch_loss * len(targets)
                correct += batch_correct
                count += len(targets)
                bar.describe(
                    f"epoch {epoch}/{self.epochs}  loss {total_loss / count:.4f}  acc {correct / count:.3f}  "
                    f"{count * self.context.world_size / max(time.perf_counter() - started, 1e-9):.0f} img/s"
                )
                bar.advance()
        total_loss, correct, count = distributed.sum_across_ranks([total_loss, correct, count], self.context, self.device)
        return total_loss / max(count, 1), correct / max(count, 1), int(count)

    def _train_step(self, inputs, targets, optimizer, scheduler, scaler, criterion) -> tuple[float, int]:
        """One optimizer step; returns (mean loss, correct predictions) of the batch."""
        inputs = inputs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        with self._autocast():
            logits = self.forward_model(inputs)
            loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return loss.item(), int((logits.argmax(1) == targets).sum().item())

    @torch.no_grad()
    def _evaluate(self, criterion) -> tuple[float, float]:
        self.model.eval()
        total_loss, correct, count = 0.0, 0.0, 0.0
        for inputs, targets in self._loader(self.val_folder, False):
            inputs = inputs.to(self.device).contiguous(memory_format=self.memory_format)
            targets = targets.to(self.device)
            with self._autocast():
                logits = self.model(inputs).float()
            total_loss += criterion(logits, targets).item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            count += len(targets)
        total_loss, correct, count = distributed.sum_across_ranks([total_loss, correct, count], self.context, self.device)
        return total_loss / max(count, 1), correct / max(count, 1)
