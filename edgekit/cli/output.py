"""The consoles every command prints through: tables and results on stdout, problems on stderr.

Off a terminal (CI logs, pipes) rich would squeeze tables into 80 columns; they get 160 instead, and
long lines are never wrapped, so paths stay whole and greppable.
"""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
