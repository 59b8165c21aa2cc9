"""Errors a user can fix. The CLI prints them as one line and exits 2; anything else is a bug."""


class EdgekitError(Exception):
    """A mistake in input, config or environment, with a message that names the file or value and the fix."""

    exit_code = 2


class DataError(EdgekitError):
    """An image folder or image that cannot be used."""


class ModelError(EdgekitError):
    """An unknown model, unusable weights or a broken model file."""


class ConfigError(EdgekitError):
    """A config file or flag combination that is invalid."""


class ExportError(EdgekitError):
    """An export or quantization step that cannot be carried out."""


class TargetError(EdgekitError):
    """A target (a device reached over ssh, or this machine) that cannot be reached, set up or used; the message
    names the target and the fix, and never carries a secret."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, at most ``limit`` characters (its type name when the
    message is empty): third-party errors quoted inside edgekit's one-line messages."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
