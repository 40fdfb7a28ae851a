"""What sherpa-onnx reads beside an exported graph, for the whole-file and the streaming export alike: metadata in
the graph, and ``tokens.txt``."""

from __future__ import annotations

from pathlib import Path


def add_metadata(path: Path, meta: dict[str, str]) -> None:
    """Write ``meta`` into the ONNX graph at ``path`` as metadata_props (what sherpa-onnx reads)."""
    import onnx

    graph = onnx.load(str(path))
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def tokens_txt(pieces: list[str]) -> str:
    """sherpa-onnx's tokens.txt: ``piece id`` per line, the CTC blank ``<blk>`` last."""
    return "".join(f"{p} {i}\n" for i, p in enumerate([*pieces, "<blk>"]))
