"""Stock NeMo reads what `korasr prepare kspon` writes: its manifest parser and audio loader, unmodified."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from korasr.data.kspon import prepare_kspon
from korasr.data.sample_corpus import SampleOptions, make_sample_corpus


@pytest.mark.slow
def test_nemo_dataset_loads_our_manifest(tmp_path):
    from nemo.collections.asr.data.audio_to_text import AudioToCharDataset

    corpus = make_sample_corpus(tmp_path / "K", SampleOptions(utterances=20, synth="tone"), progress=False)
    out = prepare_kspon(corpus, tmp_path / "m", audio_dir=tmp_path / "a", progress=False).manifests["dev"]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    labels = sorted({ch for row in rows for ch in row["text"]})
    dataset = AudioToCharDataset(manifest_filepath=str(out), labels=labels, sample_rate=16000, normalize=False)
    assert len(dataset) == len(rows)
    for i, row in enumerate(rows):
        audio, audio_len, tokens, _tokens_len = dataset[i]
        assert int(audio_len) == round(row["duration"] * 16000)
        ours, _ = sf.read(row["audio_filepath"], dtype="float32")
        np.testing.assert_allclose(audio.numpy(), ours, atol=1e-6)
        assert "".join(labels[t] for t in tokens.tolist()) == row["text"]
