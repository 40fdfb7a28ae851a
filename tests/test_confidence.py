"""Confidence (issue 36 §2): NeMo's CTC confidence computed by the onnxruntime-only runtime, equal to NeMo's own on
the same log-probabilities, along greedy and beam paths, in every output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from korasr.runtime.confidence import (
    AGGREGATIONS,
    ConfidenceOptions,
    aggregate,
    frame_confidence,
    join_confidence,
    path_confidence,
)
from korasr.runtime.results import Result, Segment, Word, token_segments, token_words
from tests.conftest import eval_rows

ALL_MEASURES = [ConfidenceOptions(method="max_prob", alpha=a) for a in (1.0, 0.5)] + [
    ConfidenceOptions(entropy_type=kind, entropy_norm=norm, alpha=a)
    for kind in ("gibbs", "tsallis", "renyi")
    for norm in ("lin", "exp")
    for a in (1.0, 0.33, 0.7)
]
# what the decoding parity runs: the default, and each setting changed at least once
DECODING_OPTIONS = [
    ConfidenceOptions(),
    ConfidenceOptions(method="max_prob", alpha=1.0, aggregation="mean"),
    ConfidenceOptions(entropy_type="renyi", entropy_norm="lin", aggregation="prod", exclude_blank=False),
    ConfidenceOptions(entropy_type="gibbs", alpha=0.5, aggregation="max"),
]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


# --- pure functions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", ALL_MEASURES, ids=lambda o: f"{o.measure}-{o.alpha}")
def test_every_measure_is_one_when_certain_and_zero_when_uniform(options):
    v = 9
    certain = np.full((1, v), -np.inf, dtype=np.float32)
    certain[0, 3] = 0.0  # -inf elsewhere: NeMo's nan_to_num turns it into the float32 minimum, so do we
    uniform = np.full((1, v), -math.log(v), dtype=np.float32)
    between = log_softmax(np.array([[2.0, 1.0, 0.5, 0, 0, 0, 0, 0, 0]]))
    assert frame_confidence(certain, options)[0] == pytest.approx(1.0, abs=1e-6)
    assert frame_confidence(uniform, options)[0] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < frame_confidence(between, options)[0] < 1.0


def test_bad_options_name_the_setting():
    for kwargs, name in (({"method": "entropyy"}, "method"), ({"entropy_type": "shannon"}, "entropy_type"),
                         ({"entropy_norm": "log"}, "entropy_norm"), ({"aggregation": "median"}, "aggregation"),
                         ({"alpha": 0.0}, "alpha"), ({"alpha": math.nan}, "alpha")):  # fmt: skip
        with pytest.raises(ValueError, match=f"confidence {name}"):
            ConfidenceOptions(**kwargs)


def test_tokens_take_their_own_frames_and_the_utterance_its_non_blank_ones():
    blank = 3
    rng = np.random.default_rng(0)
    logprobs = log_softmax(rng.normal(size=(8, 4)) * 3)
    path = [blank, 0, 0, blank, 0, 1, blank, blank]  # tokens: 0 (frames 1-2), 0 (frame 4), 1 (frame 5)
    frames = frame_confidence(logprobs)
    got = path_confidence(logprobs, path, blank)
    assert got.tokens == pytest.approx([min(frames[1:3]), frames[4], frames[5]])
    assert got.utterance == pytest.approx(min(frames[[1, 2, 4, 5]])) and got.frames == 4
    # blanks kept: each token owns the frames up to the next one's start, the last to the end; leading blanks none
    keep = ConfidenceOptions(exclude_blank=False, aggregation="mean")
    got = path_confidence(logprobs, path, blank, keep)
    assert got.tokens == pytest.approx([frames[1:4].mean(), frames[4], frames[5:].mean()])
    assert got.utterance == pytest.approx(frames.mean())
    # nothing but blanks: NeMo's utterance takes the first frame; no frames at all: no confidence
    assert path_confidence(logprobs, [blank] * 8, blank).utterance == pytest.approx(frames[0])
    assert path_confidence(logprobs[:0], [], blank).utterance is None
    with pytest.raises(ValueError, match="7 labels for 8 frames"):
        path_confidence(logprobs, path[:7], blank)


def test_words_and_segments_aggregate_their_tokens():
    pieces = ["<unk>", "▁", "ᄀ", "ᅡ", "▁ᄂ", "<blank>"]
    tokens = [(1, 0), (2, 1), (3, 2), (1, 3), (4, 4), (3, 5), (4, 40), (3, 41)]  # 가 나 | (silence) 나
    values = [0.9, 0.5, 0.8, 0.1, 0.7, 0.6, 0.3, 0.4]
    frames = [np.array([v]) for v in values]
    from korasr.runtime.confidence import PathConfidence

    scores = PathConfidence(values, frames, min(values), len(values), "min")
    words = token_words(tokens, pieces, "jamo", 0.04, confidence=scores)
    # a lone "▁" before "▁ᄂ" is no word, and its 0.1 counts for none (NeMo skips it too)
    assert [(w.text, w.confidence) for w in words] == [("가", 0.5), ("나", 0.6), ("나", 0.3)]
    segments = token_segments(tokens, pieces, "jamo", 0.04, confidence=scores)
    assert [(s.text, s.confidence) for s in segments] == [("가 나", 0.1), ("나", 0.3)]
    assert [w.confidence for w in segments[0].words] == [0.5, 0.6]
    assert all(w.confidence is None for w in token_words(tokens, pieces, "jamo", 0.04))


def test_chunks_join_as_one_utterance():
    assert join_confidence([0.5, None, 0.9], [2, 0, 6], "mean") == pytest.approx((0.5 * 2 + 0.9 * 6) / 8)
    for how in AGGREGATIONS[1:]:
        assert join_confidence([0.5, 0.9], [2, 6], how) == aggregate([0.5, 0.9], how)
    assert join_confidence([None], [0], "min") is None


def test_outputs_carry_confidence():
    from korasr.serve.formats import shaped

    words = [Word("가", 0.0, 0.2, 0.123456), Word("나", 0.2, 0.4, 0.9)]
    result = Result("가 나", words, [Segment("가 나", 0.0, 0.4, words, 0.1)], confidence=0.1, confidence_frames=3)
    body = shaped(result, 0.4, "verbose_json")
    assert body["confidence"] == 0.1 and body["segments"][0]["confidence"] == 0.1
    assert [w["confidence"] for w in body["words"]] == [0.1235, 0.9]
    assert result.as_dict() == {"text": "가 나", "confidence": 0.1, "words": [
        {"word": "가", "start": 0.0, "end": 0.2, "confidence": 0.1235},
        {"word": "나", "start": 0.2, "end": 0.4, "confidence": 0.9}]}  # fmt: skip
    assert shaped(result, 0.4, "json") == {"text": "가 나"}  # OpenAI's json has the text alone


# --- NeMo's own confidence on the same log-probabilities ----------------------------------------------------------


@pytest.fixture(scope="module")
def sample(exported, recipe):  # type: ignore[no-untyped-def]
    """Log-probabilities of 12 eval clips from the export, and a recognizer."""
    from korasr.runtime import Recognizer

    rec = Recognizer(exported, threads=1)
    rec.use_decoder("greedy")  # NeMo's greedy_batch path is the one compared
    waves = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in eval_rows(recipe, 12)]
    return rec, rec.logprobs(waves)


def nemo_decoding(exported, options: ConfidenceOptions):  # type: ignore[no-untyped-def]
    """NeMo's greedy CTC decoding (the model's default strategy, greedy_batch) with confidence, over the export's
    SentencePiece model as NeMo's ASR models hold it."""
    from nemo.collections.asr.parts.submodules.ctc_decoding import CTCBPEDecoding, CTCBPEDecodingConfig
    from nemo.collections.asr.parts.utils.asr_confidence_utils import ConfidenceConfig, ConfidenceMethodConfig
    from nemo.collections.common.tokenizers import SentencePieceTokenizer
    from omegaconf import OmegaConf

    tokenizer = SentencePieceTokenizer(str(exported / "tokenizer.model"))
    tokenizer.tokenizer.vocab_size = tokenizer.vocab_size  # what NeMo's ASRBPEMixin attaches when a model loads
    method = ConfidenceMethodConfig(name=options.method, entropy_type=options.entropy_type, alpha=options.alpha,
                                    entropy_norm=options.entropy_norm)  # fmt: skip
    confidence = ConfidenceConfig(preserve_word_confidence=True, exclude_blank=options.exclude_blank,
                                  aggregation=options.aggregation, method_cfg=method)  # fmt: skip
    cfg = CTCBPEDecodingConfig(strategy="greedy_batch", confidence_cfg=confidence)
    return CTCBPEDecoding(OmegaConf.structured(cfg), tokenizer)


@pytest.mark.slow
def test_the_runtime_scores_as_nemo_on_the_same_logprobs(exported, sample):
    import torch
    from nemo.collections.asr.models.confidence_ensemble import compute_confidence
    from nemo.collections.asr.parts.utils.asr_confidence_utils import (
        ConfidenceConfig,
        ConfidenceMethodConfig,
        get_confidence_measure_bank,
    )
    from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

    rec, logprobs = sample
    # every frame measure of NeMo's bank, on real and on random frames
    frames = torch.from_numpy(
        np.concatenate([*logprobs, log_softmax(np.random.default_rng(1).normal(size=(50, 81)) * 4)])
    )
    bank = get_confidence_measure_bank()
    for options in ALL_MEASURES:
        theirs = bank[options.measure](frames, v=frames.shape[1], t=options.alpha).numpy()
        np.testing.assert_allclose(
            frame_confidence(frames.numpy(), options), theirs, atol=2e-6, err_msg=options.measure
        )

    batch = torch.zeros(len(logprobs), max(len(x) for x in logprobs), logprobs[0].shape[1])
    for i, x in enumerate(logprobs):
        batch[i, : len(x)] = torch.from_numpy(x)
    lengths = torch.tensor([len(x) for x in logprobs])
    compared = 0
    for options in DECODING_OPTIONS:
        hyps = nemo_decoding(exported, options).ctc_decoder_predictions_tensor(batch, lengths, return_hypotheses=True)
        rec.confidence = options
        for hyp, x in zip(hyps, logprobs, strict=True):
            ours = rec.decode(x, timestamps=True)
            assert [w.text for w in ours.words] == ours.text.split()
            assert len(ours.words) == len(hyp.word_confidence), (ours.text, hyp.text)
            np.testing.assert_allclose([w.confidence for w in ours.words], hyp.word_confidence, rtol=1e-4, atol=1e-6)
            compared += len(ours.words)
            # the utterance: NeMo's utterance confidence (its confidence ensembles), which fixes alpha at 1 for
            # max_prob where decoding uses the configured alpha (here 1 as well)
            cfg = ConfidenceConfig(exclude_blank=options.exclude_blank, aggregation=options.aggregation,
                                   method_cfg=ConfidenceMethodConfig(name=options.method, alpha=options.alpha,
                                                                     entropy_type=options.entropy_type,
                                                                     entropy_norm=options.entropy_norm))  # fmt: skip
            theirs = compute_confidence(Hypothesis(score=0.0, y_sequence=torch.from_numpy(x)), cfg)
            assert ours.confidence == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    assert compared > 100  # words, not an empty comparison
    rec.confidence = ConfidenceOptions()


@pytest.mark.slow
def test_beam_and_greedy_agree_on_a_shared_path_and_beam_follows_its_own(sample):
    from korasr.runtime.beam import BeamDecoder, BeamOptions
    from korasr.runtime.ctc import best_path

    rec, logprobs = sample
    beam = BeamDecoder(rec.blank, BeamOptions(beam=8))
    same = 0
    for x in logprobs:
        if beam.path(x) != best_path(x):
            continue
        same += 1
        greedy, searched = rec.decode(x, timestamps=True), rec.decode(x, timestamps=True, beam=beam)
        assert searched.text == greedy.text and searched.confidence == greedy.confidence
        assert [w.confidence for w in searched.words] == [w.confidence for w in greedy.words]
    assert same >= 6  # without an LM the best single alignment is greedy's on most clips
    # a hotword drags the beam onto a piece greedy never chose: its tokens' confidence is that alignment's frames'
    from korasr.runtime.beam import Hotword

    x = logprobs[0]
    piece = next(p for p in range(1, rec.blank) if p not in best_path(x))
    boosted = BeamDecoder(rec.blank, BeamOptions(beam=8), hotwords=[Hotword("x", 30.0, ((piece,),))])
    moved = boosted.path(x)
    assert piece in moved
    ours = rec.decode(x, beam=boosted)
    expected = path_confidence(x, moved, rec.blank)
    assert ours.confidence == expected.utterance and ours.confidence_frames == expected.frames
    assert expected.frames != path_confidence(x, best_path(x), rec.blank).frames or expected.tokens != pytest.approx(
        path_confidence(x, best_path(x), rec.blank).tokens)  # fmt: skip


@pytest.mark.slow
def test_chunked_audio_is_one_utterances_confidence(exported, recipe):
    from korasr.runtime import Recognizer, chunk_bounds

    rec = Recognizer(exported, threads=1, confidence=ConfidenceOptions(aggregation="mean"))
    pause = np.zeros(8000, dtype=np.float32)
    long = np.concatenate(
        [x for r in eval_rows(recipe, 6) for x in (sf.read(r["audio_filepath"], dtype="float32")[0], pause)]
    )
    got = rec.transcribe_arrays([long], batch_size=1, chunk_seconds=5.0, timestamps=True)[0]
    chunks = [rec.logprobs([long[s:e]])[0] for s, e in chunk_bounds(long, 5.0)]
    assert len(chunks) > 2
    assert rec.hangul is not None  # a jamo model decodes with greedy-hangul: its path's frames are the ones counted
    frames = np.concatenate([frame_confidence(x)[np.array(rec.hangul.path(x)) != rec.blank] for x in chunks])
    assert got.confidence == pytest.approx(frames.mean()) and got.confidence_frames == len(frames)
    assert all(0.0 <= w.confidence <= 1.0 for w in got.words)
