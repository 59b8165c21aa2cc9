"""Progress bars for long work: on stderr (stdout stays clean for --json), and only on a terminal
(CI logs get no redraw noise)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import TYPE_CHECKING, Iterable, Iterator, TypeVar

from .display import console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
    from rich.text import Text

T = TypeVar("T")

stderr = console(stderr=True)  # literal text: a description or note with brackets prints whole


def track(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterable[T]:
    """Iterate ``items`` with a transient progress bar when ``enabled`` and stderr is a terminal."""
    if not enabled or not stderr.is_terminal:
        return items
    from rich.markup import escape
    from rich.progress import track as rich_track

    # rich's track formats its description column as markup whatever the console says; escaped, it prints whole.
    return rich_track(items, description=escape(description), total=total, transient=True, console=stderr)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence third-party chatter for the block: stdout prints, warnings, and log records below ERROR.

    The exporters, converters and ORT's quantization tools print progress, per-node INFO lines and notes;
    a library call (and ``--json``) stays clean. Errors still raise and are reported by the caller."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        logging.disable(previous)


def note(message: str | Text, enabled: bool = True) -> None:
    """A one-line status message on stderr (e.g. per-epoch metrics), printed as it is (``display.styled`` for colour)."""
    if enabled:
        stderr.print(message)


class Bar:
    """A transient progress bar for multi-step work (``with Bar(enabled) as bar``), on stderr and only on a
    terminal; otherwise a silent stand-in, so library code can report progress unconditionally."""

    def __init__(self, enabled: bool = True):
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._stepped = False
        if enabled and stderr.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
                console=stderr,
            )

    def __enter__(self) -> "Bar":
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc_info)

    def begin(self, total: int, description: str) -> None:
        """Start a new phase of ``total`` steps (replacing the previous one)."""
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(description, total=total)
            self._stepped = False

    def describe(self, description: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description)

    def advance(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)

    def step(self, description: str) -> None:
        """Mark the previous step done and name the one starting now."""
        if self._stepped:
            self.advance()
        self._stepped = True
        self.describe(description)
