"""The consoles every command prints through: tables and results on stdout, problems on stderr.

Both print strings literally (brackets in paths and install hints survive) and, off a terminal, keep every
table at its natural width; see edgekit.display for why. Colour goes through ``style=`` or ``styled``."""

from __future__ import annotations

from ..display import console as _console
from ..display import styled

console = _console()
errors = _console(stderr=True)

__all__ = ["console", "errors", "styled"]
