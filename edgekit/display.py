"""How edgekit writes for people, in one place: the consoles it prints through, and one unit for sizes.

Literal text. Rich reads ``[...]`` in a string as markup and drops what it takes for a tag, so
``pip install 'edgekit[openvino]'`` would print as ``pip install 'edgekit'``; it also turns ``:name:`` into emoji.
Paths, labels, model names, exception messages and install hints carry both, so every console edgekit prints
through has markup, emoji and highlighting off: a string (a message, a table cell, header, title or caption)
prints as it is. Colour is asked for explicitly, with ``style=`` or with ``styled`` pieces.

Off a terminal (CI logs, pipes, ``make demo | cat``) nothing is cut or wrapped. Rich would otherwise size
such a console to 80 columns (or $COLUMNS) and squeeze a wide table until its cells end in "…". A
non-terminal console is as wide as anything it prints, so a table keeps its natural width with every column
whole and lines are never wrapped: a log viewer scrolls sideways, grep finds whole values, and the table looks
the same as on a terminal (markdown, for a PR comment, is what ``--md`` writes).

Sizes are decimal megabytes (1 MB = 10^6 bytes), labelled "MB", for files and memory alike: the gate's
threshold key ``max_size_mb`` and every ``*_mb`` field of the JSON reports already say MB, so decimal MB keeps
each config key and report field true to its name without a rename; it is also the unit PyPI and app stores
show a download in.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.text import Text

MB = 1_000_000
PIPE_WIDTH = 100_000  # "as wide as anything printed": a table never reaches it, text is not wrapped at all


class _Console(Console):
    """Rich's Console with a width decided at each print by the stream it writes to: the terminal's, or
    PIPE_WIDTH off a terminal (even where FORCE_COLOR makes rich treat a CI log as one)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        return size if _is_tty(self.file) else ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def console(stderr: bool = False) -> Console:
    """A console that prints strings literally; off a terminal, wide enough that nothing is cut or wrapped."""
    return _Console(stderr=stderr, markup=False, emoji=False, highlight=False, soft_wrap=True)


def styled(*parts: Any) -> Text:
    """One line from pieces: a string prints as it is, a ``(text, style)`` pair in that style."""
    line = Text()
    for part in parts:
        text, style = part if isinstance(part, tuple) else (part, "")
        line.append(str(text), style=style)
    return line


def megabytes(size_bytes: float) -> float:
    """``size_bytes`` in MB (10^6 bytes)."""
    return size_bytes / MB


def format_size(size_bytes: float, digits: int = 2) -> str:
    """A file or memory size the way every edgekit table and message shows it: ``13.67 MB``."""
    return f"{megabytes(size_bytes):.{digits}f} MB"
