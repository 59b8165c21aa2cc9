"""The head strategy on cached features is multinomial logistic regression: a convex problem, so it is
solved to convergence (full-batch L-BFGS) instead of trained for a guessed number of epochs.

The L2 strength is chosen on the validation split from a small grid, the linear-probe recipe of CLIP
(Radford et al. 2021) and of timm-style linear evaluations. The objective is scikit-learn's
LogisticRegression's up to a constant factor: mean cross-entropy + l2/2 ||W||^2 with l2 = 1/(C n),
bias unpenalized, so its C grid and figures compare one to one.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.nn import functional as F

from .options import HeadCandidate, HeadSolve

# scikit-learn's C from 0.01 to 100, half a decade apart. The digits/Lite0 optimum sat at C = 3..10.
C_GRID = tuple(float(c) for c in np.logspace(-2, 2, 9))
MAX_ITERATIONS = 1000
GRADIENT_TOLERANCE = 1e-6


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def _fit(x, y, num_classes: int, l2: float, start: tuple[torch.Tensor, torch.Tensor] | None):
    """Minimize mean CE + l2/2 ||W||^2 from ``start`` (zeros if None); returns (W, b, iterations, grad norm)."""
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype) if start is None else start[0].clone()
    bias = torch.zeros(num_classes, dtype=x.dtype) if start is None else start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=MAX_ITERATIONS,
        max_eval=MAX_ITERATIONS * 5 // 4,
        history_size=20,
        tolerance_grad=GRADIENT_TOLERANCE,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    closure()
    assert weight.grad is not None and bias.grad is not None  # closure() just ran backward()
    gradient = float(torch.cat([weight.grad.flatten(), bias.grad.flatten()]).abs().max())
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    return weight.detach(), bias.detach(), iterations, gradient


@torch.no_grad()
def _evaluate(weight, bias, x, y) -> tuple[float, float]:
    logits = x @ weight.T + bias
    return float(F.cross_entropy(logits, y)), _accuracy(logits, y)


def solve_linear_head(
    train_features: np.ndarray | torch.Tensor,
    train_labels,
    val_features: np.ndarray | torch.Tensor,
    val_labels,
    num_classes: int,
    l2: float | None = None,
    c_grid: tuple[float, ...] = C_GRID,
) -> tuple[torch.Tensor, torch.Tensor, HeadSolve]:
    """Fit the linear head (weight [classes, features], bias [classes]) to convergence.

    ``l2`` None: try every C of ``c_grid`` (weakest regularization last, each fit warm-started from the
    previous one, which is what makes the path cheap), keep the best validation accuracy (ties: lower
    validation loss). Deterministic: float64, full batch, no randomness.
    """
    started = time.perf_counter()
    x = torch.as_tensor(np.asarray(train_features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    vx = torch.as_tensor(np.asarray(val_features), dtype=torch.float64)
    vy = torch.as_tensor(np.asarray(val_labels), dtype=torch.long)
    n = len(x)
    threads = torch.get_num_threads()
    # These matrices are small (images x features x classes): one thread is as fast when the machine is
    # quiet and many times faster when it is busy (OpenMP threads spin-waiting on shared cores).
    torch.set_num_threads(1)
    try:
        fits = _solve_path(x, y, vx, vy, num_classes, l2, c_grid, n)
    finally:
        torch.set_num_threads(threads)
    best = max(fits, key=lambda f: (f[8], -f[7]))
    strength, weight, bias, iterations, gradient, train_loss, train_accuracy, val_loss, val_accuracy = best
    grid = [
        HeadCandidate(
            l2=f[0], c=_c(f[0], n), iterations=f[3], train_loss=round(f[5], 6), val_loss=round(f[7], 6), val_accuracy=round(f[8], 6)
        )
        for f in fits
    ]
    solve = HeadSolve(
        l2=strength,
        c=_c(strength, n),
        chosen_by="--l2" if l2 is not None else "validation grid",
        iterations=iterations,
        converged=gradient <= GRADIENT_TOLERANCE * 10,
        gradient_norm=gradient,
        train_loss=round(train_loss, 6),
        train_accuracy=round(train_accuracy, 6),
        val_loss=round(val_loss, 6),
        val_accuracy=round(val_accuracy, 6),
        seconds=round(time.perf_counter() - started, 3),
        grid=grid if l2 is None else [],
    )
    return weight.float(), bias.float(), solve


def _solve_path(x, y, vx, vy, num_classes, l2, c_grid, n) -> list[tuple]:
    strengths = [l2] if l2 is not None else [1.0 / (c * n) for c in sorted(c_grid)]
    fits = []
    start = None
    with torch.enable_grad():
        for strength in strengths:
            weight, bias, iterations, gradient = _fit(x, y, num_classes, strength, start)
            start = (weight, bias)
            train_loss, train_accuracy = _evaluate(weight, bias, x, y)
            val_loss, val_accuracy = _evaluate(weight, bias, vx, vy)
            fits.append((strength, weight, bias, iterations, gradient, train_loss, train_accuracy, val_loss, val_accuracy))
    return fits


def _c(l2: float, n: int) -> float | None:
    return None if l2 == 0 else 1.0 / (l2 * n)  # l2 0 is C = infinity, which JSON cannot hold
