"""The package version, at the bottom layer so any module can record it without importing all of edgekit."""

__version__ = "0.1.0"
