"""`korasr export`: a ``.nemo`` → a deployment folder that needs only onnxruntime.

- :mod:`korasr.export.offline`: whole-file graphs (``model.onnx`` with the mel front end, ``encoder.onnx`` for
  sherpa-onnx's offline recognizer, fp16/INT8 copies, TensorRT plans, the Triton repository), parity-gated.
- :mod:`korasr.export.streaming`: for a cache-aware streaming model, ``streaming/`` beside them: the encoder with
  explicit caches (sherpa-onnx's online metadata), the chunk front end, gated against NeMo's own cache-aware
  streaming (``conformer_stream_step``).
- :mod:`korasr.export.sherpa`: what sherpa-onnx reads beside either graph (metadata, ``tokens.txt``).
"""

from korasr.export.offline import ExportError, check_reduced, compare_outputs, export, greedy_ids, tokens_txt

__all__ = ["ExportError", "check_reduced", "compare_outputs", "export", "greedy_ids", "tokens_txt"]
