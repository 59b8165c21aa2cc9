"""edgekit: fine-tune, export, quantize, benchmark and gate image classifiers for edge devices."""

__version__ = "0.1.0"
