"""The `edgekit` command line: parses flags, calls the library, prints, maps errors to exit codes.

Exit codes: 0 success; 1 a check failed (parity, gate); 2 a user error (bad input, config or flags).
Each command lives in its own module here and is added to the group below.
"""

from __future__ import annotations

import click

from ..errors import EdgekitError
from ..version import __version__


class _Group(click.Group):
    """A click group that turns EdgekitError into one line on stderr and exit 2, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; files already written are complete, partial ones were not kept", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgekit")  # from edgekit/version.py: right without installed metadata too
def cli():
    """edgekit: fine-tune, export, benchmark and gate image classifiers for edge devices.

    \b
    Typical path:
      edgekit finetune --data photos/train --out runs/flowers
      edgekit export runs/flowers --format all --quantize none,fp16,int8
      edgekit bench runs/flowers --runtime torch,ort-cpu
      edgekit gate --config configs/gate.yaml
      edgekit target info ssh://pi@raspberrypi.local
    """


def main() -> None:
    cli.main(prog_name="edgekit")


from . import bench as _bench  # noqa: E402
from . import demo as _demo
from . import export as _export
from . import finetune as _finetune
from . import gate as _gate
from . import target as _target

for _module in (_finetune, _export, _bench, _gate, _target, _demo):
    for _command in _module.COMMANDS:
        cli.add_command(_command)
