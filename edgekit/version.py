"""The package version, written here only: pyproject.toml reads it (setuptools' dynamic version), and it sits at
the bottom layer so any module can record it without importing all of edgekit."""

__version__ = "0.1.0"
