"""Tokenizers: the codec round trip, jamo that stays jamo, every syllable encodable, NeMo loads each unit."""

from __future__ import annotations

import json
import subprocess
import unicodedata
from pathlib import Path

import pytest
import sentencepiece as spm
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from korasr.data.kspon import prepare_kspon
from korasr.data.sample_corpus import SampleOptions, make_sample_corpus
from korasr.text.codec import MODERN_JAMO, count_ill_formed, from_model_text, to_model_text
from korasr.tokenizer.build import TokenizerError, TokenizerOptions, build_tokenizer, default_out
from korasr.tokenizer.report import ctc_length, encoder_frames
from tests.conftest import korasr_cmd

UNITS = ("jamo", "syllable", "char-jamo", "char-syllable")
ALL_SYLLABLES = [chr(c) for c in range(0xAC00, 0xD7A4)]

# --- the codec ---------------------------------------------------------------------------------------------
KEPT = st.sampled_from(list("0123456789%. ") + list("abcXYZ") + ["1.5", "70%"])
HANGUL = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
NORMALIZED = st.lists(st.one_of(HANGUL, KEPT), max_size=40).map(lambda xs: " ".join("".join(xs).split()))


@settings(max_examples=500, deadline=None)
@given(NORMALIZED, st.sampled_from(UNITS))
def test_codec_round_trip_is_exact(text, unit):
    model_text = to_model_text(text, unit)
    assert from_model_text(model_text, unit) == text
    assert count_ill_formed(model_text) == 0
    if unit in ("jamo", "char-jamo"):
        assert not any("\uac00" <= ch <= "\ud7a3" for ch in model_text)


def test_codec_units():
    assert to_model_text("한국", "jamo") == "\u1112\u1161\u11ab\u1100\u116e\u11a8"
    assert to_model_text("한국", "syllable") == "한국"
    with pytest.raises(ValueError, match="unit"):
        to_model_text("한국", "phoneme")


@pytest.mark.parametrize(
    ("model_text", "expected", "orphans"),
    [
        ("\u1165\u110b\u116e\u110b\u1166", "ㅓ우에", 1),  # a vowel with no initial (seen in a small model)
        ("\u1100\u1161\u11a8\u11a8", "각ㄱ", 1),  # a second final
        ("\u1112 \u1161", "ㅎ ㅏ", 2),  # an initial with no vowel, a vowel after a space
        ("\u11ab", "ㄴ", 1),  # a final alone
        ("\u1100\u1161\u1114", "가", 1),  # a non-modern jamo is dropped
        ("\u1100\u1161", "가", 0),
    ],
)
def test_ill_formed_jamo_become_compatibility_jamo(model_text, expected, orphans):
    assert from_model_text(model_text, "jamo") == expected
    assert count_ill_formed(model_text) == orphans
    assert from_model_text(from_model_text(model_text, "jamo"), "jamo") == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*MODERN_JAMO, " ", "a", "1"]), max_size=30).map("".join))
def test_any_jamo_sequence_decodes_to_valid_text(model_text):
    text = from_model_text(model_text, "jamo")
    assert not any("\u1100" <= ch <= "\u11ff" for ch in text)  # no conjoining jamo left
    assert text == unicodedata.normalize("NFC", text)


def test_ctc_length_and_encoder_frames():
    assert ctc_length([1, 2, 3]) == 3
    assert ctc_length([1, 1, 2, 2, 2]) == 8
    assert encoder_frames(1.0, 1) == 101
    assert encoder_frames(1.0, 4) == 26  # 101 → 51 → 26
    assert encoder_frames(1.0, 8) == 13
    with pytest.raises(ValueError, match="power of two"):
        encoder_frames(1.0, 6)


# --- building ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tok")
    # the templates' text: its few hundred syllables fit the syllable tokenizers' vocabularies below (the open text
    # has about 600 in 300 utterances)
    options = SampleOptions(utterances=300, seed=5, synth="tone", text="templates")
    corpus = make_sample_corpus(tmp / "K", options, progress=False)
    return prepare_kspon(corpus, tmp / "manifests" / "sample", audio_dir=tmp / "a", progress=False).out_dir


@pytest.fixture(scope="module")
def built(manifests, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tokenizers")
    vocab = {"jamo": 128, "syllable": 400, "char-jamo": 0, "char-syllable": 0}
    return {
        unit: build_tokenizer(
            manifests / "train.jsonl", out / unit, TokenizerOptions(unit=unit, vocab=vocab[unit] or 2)
        )
        for unit in UNITS
    }


def pieces(directory: Path) -> list[str]:
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def test_directory_contents_and_record(built, manifests):
    for unit, directory in built.items():
        names = {p.name for p in directory.iterdir()}
        assert {"tokenizer.model", "tokenizer.vocab", "vocab.txt", "tokenizer.yaml", "report.json"} <= names
        meta = yaml.safe_load((directory / "tokenizer.yaml").read_text())
        assert meta["unit"] == unit
        assert meta["normalization_rule_name"] == "identity"
        assert meta["train_manifest"] == str(manifests / "train.jsonl")
        assert len(meta["train_manifest_sha256"]) == 64
        ps = pieces(directory)
        assert meta["vocab_size"] == len(ps)
        assert ps[0] == "<unk>" and "<s>" not in ps and "</s>" not in ps
        # vocab.txt as NeMo writes it: every piece but <unk>, ▁ stripped, others prefixed with ##
        vocab_txt = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
        assert len(vocab_txt) == len(ps) - 1
        assert vocab_txt == [p[1:] or p if p.startswith("▁") else f"##{p}" for p in ps[1:]]
        report = json.loads((directory / "report.json").read_text())
        assert set(report) == {"4", "8"}
        assert set(report["8"]) == {"train", "dev", "eval_clean", "eval_other", "eval_novel"}
    assert yaml.safe_load((built["char-jamo"] / "tokenizer.yaml").read_text())["type"] == "char"


def test_jamo_stays_jamo_and_covers_every_syllable(built):
    for unit in ("jamo", "char-jamo"):
        ps = pieces(built[unit])
        assert not [p for p in ps if any("\uac00" <= ch <= "\ud7a3" for ch in p)]
        sp = spm.SentencePieceProcessor(model_file=str(built[unit] / "tokenizer.model"))
        ids = sp.encode([to_model_text(s, unit) for s in ALL_SYLLABLES])
        assert all(sp.unk_id() not in row for row in ids), "every modern syllable encodes without <unk>"
        assert [from_model_text(sp.decode(row), unit) for row in ids] == ALL_SYLLABLES
    char_jamo = [p for p in pieces(built["char-jamo"]) if p not in ("<unk>", "▁")]
    assert all(len(p.lstrip("▁")) == 1 for p in char_jamo)  # one symbol per piece
    assert set(MODERN_JAMO) <= {p.lstrip("▁") for p in char_jamo}


def test_default_nmt_nfkc_would_have_made_syllables(manifests, tmp_path):
    """The trap the identity rule avoids: SentencePiece's default recomposes jamo into syllables."""
    text = [to_model_text(json.loads(line)["text"], "jamo") for line in (manifests / "train.jsonl").open()]
    (tmp_path / "t.txt").write_text("\n".join(text), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "tokenizer"), vocab_size=600,
                                   hard_vocab_limit=False, minloglevel=2)  # fmt: skip
    default = pieces(tmp_path)
    assert any(any("\uac00" <= ch <= "\ud7a3" for ch in p) for p in default)


def test_syllable_units_round_trip_the_manifest(built, manifests):
    for unit, directory in built.items():
        report = json.loads((directory / "report.json").read_text())
        for split, r in report["8"].items():
            assert r["not_round_trip"] == 0, (unit, split)
            assert r["ill_formed_jamo"] == 0
            if split == "train":
                assert r["utterances_with_unk"] == 0


def test_report_shows_why_single_jamo_needs_4x(built):
    """Single-jamo units outrun 12.5 frames/s on fast speech: the tokens/s the report measures say so."""
    jamo = json.loads((built["char-jamo"] / "report.json").read_text())
    pieces_ = json.loads((built["jamo"] / "report.json").read_text())
    rate = {
        name: r["8"]["eval_clean"]["tokens_per_second"]["mean"] for name, r in (("char", jamo), ("pieces", pieces_))
    }
    assert rate["char"] > rate["pieces"]
    assert jamo["8"]["eval_other"]["infeasible"] > jamo["4"]["eval_other"]["infeasible"]
    assert pieces_["8"]["eval_other"]["infeasible"] < jamo["8"]["eval_other"]["infeasible"]


def test_rebuild_skips_and_refuses_non_train(built, manifests, tmp_path):
    model = built["jamo"] / "tokenizer.model"
    before = model.stat().st_mtime_ns
    build_tokenizer(manifests / "train.jsonl", built["jamo"], TokenizerOptions(unit="jamo", vocab=128))
    assert model.stat().st_mtime_ns == before
    build_tokenizer(manifests / "train.jsonl", built["jamo"], TokenizerOptions(unit="jamo", vocab=100))
    assert model.stat().st_mtime_ns != before
    with pytest.raises(TokenizerError, match="train split only"):
        build_tokenizer(manifests / "dev.jsonl", tmp_path / "x", TokenizerOptions())
    with pytest.raises(TokenizerError, match=r"below the .* characters of the syllable alphabet"):
        build_tokenizer(manifests / "train.jsonl", tmp_path / "x", TokenizerOptions(unit="syllable", vocab=50))
    assert not (tmp_path / "x").exists()
    assert default_out(manifests / "train.jsonl", TokenizerOptions(unit="jamo", type="bpe", vocab=512)) == Path(
        "tokenizers/sample/jamo_bpe_v512"
    )
    assert default_out(manifests / "train.jsonl", TokenizerOptions(unit="char-jamo")) == Path(
        "tokenizers/sample/char-jamo"
    )


def test_cli_build_and_report(manifests, tmp_path):
    out = tmp_path / "t"
    proc = subprocess.run(korasr_cmd("tokenizer", "build", "--manifest", str(manifests / "train.jsonl"), "--unit",
                                     "jamo", "--type", "bpe", "--vocab", "100", "--out", str(out)),
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.strip() == str(out)
    assert "infeasible" in proc.stderr
    proc = subprocess.run(korasr_cmd("tokenizer", "report", "--tokenizer", str(out), "--manifest",
                                     str(manifests / "eval_clean.jsonl"), "--subsampling", "4"),
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.splitlines()[1].startswith("eval_clean    4")


@pytest.mark.slow
def test_stock_nemo_model_loads_each_unit(built):
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from omegaconf import OmegaConf

    text = "오늘 3시에 KTX 타고 1.5배 빨리 가요"
    for unit, directory in built.items():
        cfg = OmegaConf.create(
            {
                "sample_rate": 16000,
                "tokenizer": {"dir": str(directory), "type": "bpe"},
                "preprocessor": {
                    "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                    "features": 80,
                },
                "encoder": {
                    "_target_": "nemo.collections.asr.modules.ConvASREncoder",
                    "feat_in": 80,
                    "activation": "relu",
                    "jasper": [
                        {
                            "filters": 16,
                            "repeat": 1,
                            "kernel": [3],
                            "stride": [1],
                            "dilation": [1],
                            "dropout": 0.0,
                            "residual": False,
                        }
                    ],
                },
                "decoder": {
                    "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
                    "feat_in": 16,
                    "num_classes": -1,
                    "vocabulary": None,
                },
            }
        )
        model = EncDecCTCModelBPE(cfg=cfg)
        n_pieces = yaml.safe_load((directory / "tokenizer.yaml").read_text())["vocab_size"]
        assert model.tokenizer.vocab_size == n_pieces
        assert model.decoder.num_classes_with_blank == n_pieces + 1
        ids = model.tokenizer.text_to_ids(to_model_text(text, unit))
        assert model.tokenizer.unk_id not in ids or unit == "char-syllable"
        if unit != "char-syllable":  # its alphabet is the train syllables only
            assert from_model_text(model.tokenizer.ids_to_text(ids), unit) == text
