"""Token n-gram LMs and the runtime's beam search: the build (KenLM from the PyPI source), its refusals and
metadata; hand-checked decodes (an LM that must beat greedy, a hotword that must win and one that must not); bad
LMs and hotwords named in errors."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from korasr.data.sample_text import sentence
from korasr.lm.build import build_lm, load_tokenizer
from korasr.runtime.beam import BeamDecoder, BeamOptions, HotwordError, HotwordTrie, hotwords_from_lines, piece_variants
from korasr.runtime.ctc import greedy
from korasr.runtime.lm_artifact import LMError, check_tokenizer, read_lm, token_symbol
from korasr.text.normalize import normalize
from korasr.tokenizer.build import TokenizerOptions, build_tokenizer

TARGET = "가나다 라마"  # what is said
CONFUSION = "가너다 라마"  # what the acoustics slightly prefer


def write_manifest(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"audio_filepath": "-", "duration": 1.0, "text": t}, ensure_ascii=False) + "\n"
                            for t in texts), encoding="utf-8")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A char-syllable tokenizer (one piece per syllable: hand-made log-probs stay readable) and an LM that has
    heard TARGET often and CONFUSION never."""
    tmp = tmp_path_factory.mktemp("lm")
    r = random.Random(0)
    texts = [normalize(sentence(r, "templates"), "phonetic", "df").text for _ in range(300)]
    texts = [t for t in texts if t] + [TARGET] * 40 + ["너 바 사 자 마바사"] * 5
    manifest = write_manifest(tmp / "train.jsonl", texts)
    tokenizer = build_tokenizer(manifest, tmp / "tok", TokenizerOptions(unit="char-syllable"), report_manifests=[])
    lm = build_lm(tokenizer, tmp / "lm", order=4)
    return {"tmp": tmp, "manifest": manifest, "tokenizer": tokenizer, "lm": lm, "tok": load_tokenizer(tokenizer)}


def emissions(tok, frames: list[dict[str, float]]) -> np.ndarray:
    """Log-probs ``[frames, vocab + 1]``: each frame gives its pieces (or "blank") their probability and spreads the
    rest evenly; pieces are given as text and must be single pieces of ``tok``."""
    vocab = tok.vocab_size
    out = np.empty((len(frames), vocab + 1), dtype=np.float32)
    for t, frame in enumerate(frames):
        probs = np.full(vocab + 1, 0.0)
        for piece, p in frame.items():
            index = vocab if piece == "blank" else tok.processor.piece_to_id(piece)
            assert index != 0, f"{piece!r} is not a piece"
            probs[index] = p
        rest = 1.0 - probs.sum()
        assert rest > 0
        probs[probs == 0] = rest / int((probs == 0).sum())
        out[t] = np.log(probs)
    return out


def spoken(tok, pieces: list[dict[str, float]]) -> np.ndarray:
    """Each piece's frame followed by a confident blank frame."""
    frames = []
    for piece in pieces:
        frames += [piece, {"blank": 0.9}]
    return emissions(tok, frames)


def text_of(tok, tokens) -> str:  # type: ignore[no-untyped-def]
    return tok.processor.decode([t for t, _ in tokens])


def ambiguous(tok, second: dict[str, float], frames: int = 1) -> np.ndarray:
    """TARGET's pieces, each followed by a blank frame; the second syllable as ``second`` says, for ``frames``
    consecutive frames."""
    blank = {"blank": 0.9}
    sure = [{"▁": 0.9}, {"가": 0.9}]
    rest = [{"다": 0.9}, {"▁": 0.9}, {"라": 0.9}, {"마": 0.9}]
    steps = [f for p in sure for f in (p, blank)] + [second] * frames + [blank] + [f for p in rest for f in (p, blank)]
    return emissions(tok, steps)


# --- the build ---------------------------------------------------------------------------------------------------


def test_lm_directory_records_what_it_was_built_from(toy):
    info = read_lm(toy["lm"])
    meta = info.meta
    assert meta["order"] == 4 and meta["token_offset"] == 100
    assert meta["tokenizer"]["sha256"] == toy["tok"].sha256 and meta["tokenizer"]["vocab_size"] == toy["tok"].vocab_size
    [source] = meta["sources"]
    assert source["path"] == str(toy["manifest"]) and source["kind"] == "manifest" and len(source["sha256"]) == 64
    assert source["lines"] == len(toy["manifest"].read_text().splitlines())
    assert int(meta["ngrams"]["1"]) > 100 and set(meta["ngrams"]) == {"1", "2", "3", "4"}
    assert "kenlm 0.3.0" in meta["kenlm"] and meta["tuned"] is None
    # ARPA symbols are piece ids + 100, one character each (NeMo's NGPU-LM convention)
    symbols = set()
    with open(info.arpa, encoding="utf-8", newline="\n") as f:
        section = None
        for line in f:
            if line.startswith("\\"):
                section = line.strip()
                continue
            if section == "\\1-grams:" and "\t" in line:
                symbols.add(line.split("\t")[1])
    ids = {ord(s) - 100 for s in symbols if len(s) == 1}
    assert {token_symbol(i) for i in toy["tok"].encode(TARGET)} <= symbols and ids <= set(range(toy["tok"].vocab_size))


def test_a_rebuild_with_the_same_inputs_is_skipped_and_a_changed_source_rebuilds(toy, tmp_path):
    tok = toy["tokenizer"]
    first = build_lm(tok, tmp_path / "lm", manifests=[toy["manifest"]], order=3)
    stamp = (first / "lm.json").stat().st_mtime_ns
    assert build_lm(tok, tmp_path / "lm", manifests=[toy["manifest"]], order=3) == first
    assert (first / "lm.json").stat().st_mtime_ns == stamp
    extra = tmp_path / "domain.txt"
    extra.write_text("가나다 라마\n\nabc 라마\n", encoding="utf-8")  # one line unencodable, one empty
    build_lm(tok, tmp_path / "lm", manifests=[toy["manifest"]], texts=[extra], order=3)
    meta = read_lm(first).meta
    text_source = meta["sources"][1]
    assert (text_source["kind"], text_source["lines"], text_source["skipped_unencodable"]) == ("text", 1, 1)
    assert text_source["skipped_empty"] >= 1
    assert not list(tmp_path.glob(".lm.*"))  # no staging folder left behind


@pytest.mark.parametrize("name", ["dev.jsonl", "eval_clean.jsonl", "eval_other.jsonl"])
def test_dev_and_eval_text_is_refused(toy, tmp_path, name):
    manifest = write_manifest(tmp_path / name, [TARGET])
    with pytest.raises(LMError, match="train text only"):
        build_lm(toy["tokenizer"], tmp_path / "lm", manifests=[manifest])
    assert not (tmp_path / "lm").exists()


def test_bad_build_inputs_are_named(toy, tmp_path):
    with pytest.raises(LMError, match="order"):
        build_lm(toy["tokenizer"], tmp_path / "lm", order=1)
    with pytest.raises(LMError, match="not a korasr tokenizer directory"):
        build_lm(tmp_path, tmp_path / "lm")
    with pytest.raises(LMError, match="no such manifest"):
        build_lm(toy["tokenizer"], tmp_path / "lm", manifests=[tmp_path / "train_missing.jsonl"])
    broken = tmp_path / "train.jsonl"
    broken.write_text('{"text": "가"}\nnot json\n', encoding="utf-8")
    with pytest.raises(LMError, match=r"train.jsonl:2"):
        build_lm(toy["tokenizer"], tmp_path / "lm", manifests=[broken])


def test_missing_corrupt_and_foreign_lms_are_errors_naming_the_file(toy, tmp_path):
    with pytest.raises(LMError, match="no such LM directory"):
        read_lm(tmp_path / "nothing")
    lm = tmp_path / "lm"
    shutil.copytree(toy["lm"], lm)
    (lm / "lm.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LMError, match=r"lm.json: corrupt"):
        read_lm(lm)
    shutil.copy(toy["lm"] / "lm.json", lm / "lm.json")
    with open(lm / "lm.bin", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(LMError, match=r"lm.bin: corrupt"):
        read_lm(lm)
    (lm / "lm.bin").unlink()
    with pytest.raises(LMError, match=r"lm.bin: missing"):
        read_lm(lm)
    info = read_lm(toy["lm"])
    with pytest.raises(LMError, match="another tokenizer"):
        check_tokenizer(info, "0" * 64, info.vocab_size, "the model in /x")


# --- the decoders --------------------------------------------------------------------------------------------------


def test_the_lm_must_beat_greedy_where_the_acoustics_are_ambiguous(toy):
    tok = toy["tok"]
    lp = ambiguous(tok, {"너": 0.48, "나": 0.42})
    assert text_of(tok, greedy(lp, tok.vocab_size)) == CONFUSION
    no_lm = BeamDecoder(tok.vocab_size, BeamOptions(beam=8, alpha=0.0))
    assert text_of(tok, no_lm.decode(lp)) == CONFUSION  # beam search alone follows the acoustics
    with_lm = BeamDecoder(tok.vocab_size, BeamOptions(beam=8, alpha=0.5), read_lm(toy["lm"]).binary)
    assert text_of(tok, with_lm.decode(lp)) == TARGET
    # clear acoustics (three confident frames) win over the LM
    clear = ambiguous(tok, {"너": 0.97}, frames=3)
    assert text_of(tok, with_lm.decode(clear)) == CONFUSION


def words(tok, lines: list[str]):  # type: ignore[no-untyped-def]
    return hotwords_from_lines(lines, lambda p: piece_variants(tok.processor, tok.unit, p), "hotwords.txt")


def test_a_hotword_wins_ambiguous_acoustics_and_does_not_override_clear_ones(toy):
    tok = toy["tok"]
    lp = ambiguous(tok, {"너": 0.48, "나": 0.42})
    plain = BeamDecoder(tok.vocab_size, BeamOptions(beam=8, alpha=0.0))
    assert text_of(tok, plain.decode(lp)) == CONFUSION
    boosted = plain.with_hotwords(words(tok, ["가나다\t1.0"]))
    assert text_of(tok, boosted.decode(lp)) == TARGET
    # a hotword the audio clearly does not contain is not forced in
    clear = ambiguous(tok, {"너": 0.97}, frames=3)
    assert text_of(tok, boosted.decode(clear)) == CONFUSION
    assert text_of(tok, plain.decode(lp)) == CONFUSION  # with_hotwords left the original decoder alone


def test_a_partial_hotword_match_gives_its_boost_back():
    # pieces 1 2 3 is a hotword (boost 2 per piece); 1 2 4 follows it for two pieces and breaks
    trie = HotwordTrie([hw for hw in _hotwords({(1, 2, 3): 2.0, (7, 8): 1.0})])

    def total(pieces: list[int]) -> float:
        node, score = 0, 0.0
        for p in pieces:
            node, delta = trie.advance(node, p)
            score += delta
        return score + trie.settle(node)

    assert total([1, 2, 3]) == pytest.approx(6.0)
    assert total([1, 2, 4]) == pytest.approx(0.0)
    assert total([1, 2]) == pytest.approx(0.0)  # the utterance ends inside the match
    assert total([5, 1, 2, 3, 5, 7, 8]) == pytest.approx(8.0)
    assert total([1, 1, 2, 3]) == pytest.approx(6.0)  # a broken match restarts at the current piece


def _hotwords(spec: dict[tuple[int, ...], float]):  # type: ignore[no-untyped-def]
    from korasr.runtime.beam import Hotword

    return [Hotword(str(k), boost, (k,)) for k, boost in spec.items()]


def test_hotword_lines_and_their_errors(toy):
    tok = toy["tok"]
    parsed = words(tok, ["# names", "", "가나다", "라마\t3.5", "마바사 :0.5"])
    assert [(w.phrase, w.boost) for w in parsed] == [("가나다", 2.0), ("라마", 3.5), ("마바사", 0.5)]
    assert all(0 not in v for w in parsed for v in w.variants)
    with pytest.raises(HotwordError, match=r"hotwords.txt:2: 'KTX 가나' has characters the model's tokenizer cannot"):
        words(tok, ["가나", "KTX 가나"])
    with pytest.raises(HotwordError, match=r"hotwords.txt:1: boost 'lots' is not a number"):
        words(tok, ["가나\tlots"])
    with pytest.raises(HotwordError, match=r"boost must be in"):
        words(tok, ["가나\t-1"])


def test_beam_options_are_bounded():
    for bad in (BeamOptions(beam=0), BeamOptions(alpha=math.inf), BeamOptions(threshold=0), BeamOptions(beam_tokens=0)):
        with pytest.raises(ValueError):
            bad.validate()
