"""Progress bars for long work: on stderr (stdout stays clean for --json), and only on a terminal
(CI logs get no redraw noise)."""

from __future__ import annotations

from typing import Iterable, TypeVar

from rich.console import Console

T = TypeVar("T")

stderr = Console(stderr=True)


def track(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterable[T]:
    """Iterate ``items`` with a transient progress bar when ``enabled`` and stderr is a terminal."""
    if not enabled or not stderr.is_terminal:
        return items
    from rich.progress import track as rich_track

    return rich_track(items, description=description, total=total, transient=True, console=stderr)


def note(message: str, enabled: bool = True) -> None:
    """A one-line status message on stderr (e.g. per-epoch metrics)."""
    if enabled:
        stderr.print(message, soft_wrap=True, highlight=False)
