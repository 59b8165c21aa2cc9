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
