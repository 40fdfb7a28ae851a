"""korasr: Korean speech-recognition recipes on NVIDIA NeMo."""

__version__ = "0.1.0"

SAMPLE_RATE = 16000  # Hz: what every model, manifest and runtime here works at
