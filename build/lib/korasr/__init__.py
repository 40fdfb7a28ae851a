"""korasr: Korean speech-recognition recipes on NVIDIA NeMo."""

__version__ = "0.1.0"
