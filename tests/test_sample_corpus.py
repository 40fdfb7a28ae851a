"""The sample corpus: KsponSpeech's layout and encodings, disjoint splits, markers, determinism, real speech."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from korasr.data.korean_numbers import has_final, letters, native, sino
from korasr.data.sample_corpus import VARIETIES, SampleOptions, archive_of, make_sample_corpus, plan, train_path
from korasr.data.sample_text import TEXTS, fill
from korasr.text import normalize
from tests.conftest import korasr_cmd


@pytest.mark.parametrize(
    ("n", "reading"),
    [
        (1, "일"),
        (10, "십"),
        (11, "십일"),
        (20, "이십"),
        (105, "백오"),
        (1000, "천"),
        (3500, "삼천오백"),
        (10000, "만"),
        (15000, "만오천"),
        (20000, "이만"),
        (123456, "십이만삼천사백오십육"),
        (0, "영"),
    ],
)
def test_sino_korean_readings(n, reading):
    assert sino(n) == reading


@pytest.mark.parametrize(
    ("n", "reading"),
    [(1, "한"), (2, "두"), (3, "세"), (4, "네"), (12, "열두"), (20, "스무"), (21, "스물한"), (35, "서른다섯")],
)
def test_native_readings_before_a_counter(n, reading):
    assert native(n) == reading


def test_letters_particles_and_archives():
    assert letters("KTX") == "케이티엑스"
    assert has_final("책") and not has_final("사과") and has_final("3")  # 삼
    assert fill("{thing_o}", _Fixed("책")) == "책을"
    assert fill("{thing_o}", _Fixed("사과")) == "사과를"
    assert fill("{place_ro}", _Fixed("서울")) == "서울로"  # ㄹ takes 로
    assert fill("{place_ro}", _Fixed("시장")) == "시장으로"
    assert archive_of(124) == "KsponSpeech_01" and archive_of(125) == "KsponSpeech_02"
    assert archive_of(623) == "KsponSpeech_05"
    assert train_path(1001) == "KsponSpeech_01/KsponSpeech_0002/KsponSpeech_001001.pcm"


class _Fixed:
    """A stand-in for random.Random whose choice() always returns one word."""

    def __init__(self, word: str):
        self.word = word

    def choice(self, _seq):
        return self.word


def test_plan_splits_are_disjoint_and_cover_every_marker():
    utts = plan(SampleOptions(utterances=2500, seed=0))
    by_split: dict[str, set[str]] = {}
    for u in utts:
        by_split.setdefault(u.split, set()).add(normalize(u.raw).text)
    train = by_split["train"]
    for split in ("dev", "eval_clean", "eval_other", "eval_novel"):
        assert not by_split[split] & train, split
    assert not by_split["eval_clean"] & by_split["eval_other"]
    raws = [u.raw for u in utts if u.split == "train"]
    markers = {
        "dual pair": r"\([^()]+\)/\([^()]+\)",
        "pair with a marker": r"\)/\([^()]+\)[+/]",
        "number with a decimal point": r"\(\d\.\d배\)",
        "percent": r"\(\d+%\)",
        "thousands comma": r"\(\d{1,3},\d{3}원\)",
        "acronym": r"\([A-Z]{2,}\)/",
        "time": r"\(\d+시( \d+분)?\)/\(",
        "filler": r"(^| )\S+/ ",
        "repeat": r"\S\+ ",
        "noise tag": r"(^| )[bnol]/ ",
        "unintelligible": r"(^| )u/ ",
        "star": r"\*",
        "question": r"\?$",
        "glued tag": r"[.?][bnol]/$",
    }
    for name, pattern in markers.items():
        assert sum(bool(re.search(pattern, r)) for r in raws) >= 5, name
    words = {w for r in raws for w in normalize(r).text.split()}
    assert len(words) >= 300


@pytest.mark.parametrize(
    ("variety", "seed", "text"), [("wide", 0, "open"), ("narrow", 11, "open"), ("wide", 5, "templates")]
)
def test_eval_novel_says_no_word_the_other_splits_say(variety, seed, text):
    """eval_novel measures text nobody trained on: not one of its words (after normalization, either form) occurs
    in train, dev, eval_clean or eval_other, while its voices and prosody are eval_clean's."""
    utts = plan(SampleOptions(utterances=2500, seed=seed, variety=variety, text=text))

    def words(us) -> set[str]:  # type: ignore[no-untyped-def]
        forms = (("spelling", "df"), ("phonetic", "df"))
        return {w for u in us for form, df in forms for w in normalize(u.raw, form, df).text.split()}

    novel = [u for u in utts if u.split == "eval_novel"]
    assert len(novel) == 125 and len({u.raw for u in novel}) == 125
    assert len(words(novel)) >= 150
    assert not words(novel) & words(u for u in utts if u.split != "eval_novel")
    assert {u.voice for u in novel} <= set(VARIETIES[variety].voices) and all(u.snr_db is None for u in novel)


def test_the_open_lexicon_is_thousands_of_words_with_a_held_out_tenth():
    """``lexicon/ko.tsv`` (make lexicon: wordfreq's Korean list tagged and conjugated by Kiwi) is what the open text
    draws from: thousands of nouns, hundreds of adverbs and verbs with every form a pattern uses, all Hangul, none of
    the blocked words; about a tenth of each kind is eval_novel's, and no template word is."""
    from korasr.data.lexicon.build import BLOCKED, ENDINGS
    from korasr.data.sample_text import FORMS, LEXICON, _template_words, lexicon, novel_lemma

    lines = LEXICON.read_text(encoding="utf-8").splitlines()
    assert "wordfreq 3.1.1" in lines[1] and "kiwipiepy 0.24.1" in lines[1] and "CC BY-SA 4.0" in lines[1]
    assert tuple(ENDINGS) == FORMS
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    kinds = {kind: [r for r in rows if r[0] == kind] for kind in ("noun", "adverb", "verb")}
    assert len(kinds["noun"]) >= 10_000 and len(kinds["adverb"]) >= 500 and len(kinds["verb"]) >= 500
    assert all(len(r) == 3 + len(FORMS) for r in kinds["verb"]) and all(len(r) == 3 for r in kinds["noun"])
    words = [w for r in rows for w in [r[1], *r[3:]]]
    assert all(re.fullmatch(r"[가-힣]+", w) for w in words)
    assert not [w for w in words if any(b in w for b in BLOCKED)]
    assert {r[1]: r[3:] for r in kinds["verb"]}["돕"][:2] == ["도왔어요", "도와요"]  # Kiwi's irregular conjugation
    parts = lexicon()
    for kind in ("nouns", "adverbs", "verbs"):
        held, kept = len(getattr(parts["novel"], kind)), len(getattr(parts["train"], kind))
        assert 0.06 < held / (held + kept) < 0.14, kind
    assert all(novel_lemma(n) for n in parts["novel"].nouns)
    assert not set(parts["novel"].nouns) & _template_words()


def test_the_open_corpus_never_says_a_hotword_term():
    """The hotword evaluation set's terms are words the sample corpus must never say (korasr.data.hotword_set refuses
    to build otherwise); the lexicon has five of them, which stand in for nearby words without shifting the draws."""
    from korasr.data.hotword_set import TERMS, UNRELATED
    from korasr.data.sample_text import LEXICON

    listed = LEXICON.read_text(encoding="utf-8")
    assert [t for t in (*TERMS, *UNRELATED) if f"\t{t}\t" in listed]  # the lexicon does list some
    text = " ".join(u.spoken.replace(" ", "") for u in plan(SampleOptions(utterances=6000)))  # make train's corpus
    assert not [t for t in (*TERMS, *UNRELATED) if t in text]


@pytest.mark.parametrize("text", ["open", "templates"])
def test_the_word_report_counts_what_train_says(text):
    """The report in sample.json: eval_novel shares no word with train, the other eval splits share most of theirs,
    and the open text has many times the templates' word types (what issue 39 changed)."""
    from korasr.data.sample_corpus import word_report

    report = word_report(plan(SampleOptions(utterances=2500, seed=0, text=text)))
    assert report["eval_novel"]["tokens_in_train"] == 0 and report["eval_novel"]["types_in_train"] == 0
    assert report["train"]["tokens_in_train"] == 1
    for split in ("dev", "eval_clean", "eval_other"):
        assert 0.4 < report[split]["tokens_in_train"] < 1, split
    if text == "open":
        assert report["train"]["types"] >= 4000 and report["eval_novel"]["types"] >= 300
    else:
        assert report["train"]["types"] < 1500
    with pytest.raises(ValueError, match="text must be one of"):
        plan(SampleOptions(text="poems"))


def test_eval_novel_leaves_the_other_splits_as_they_were():
    """eval_novel draws from a generator of its own after the four splits: the splits without it are the plan of a
    corpus whose eval_novel is removed, whatever its size (the ablation and the published rows stay comparable)."""
    import korasr.data.sample_corpus as sc

    full = [u for u in plan(SampleOptions(utterances=300, seed=4)) if u.split != "eval_novel"]
    original = sc.novel_sentence
    try:
        # any other eval_novel text: one random Hangul word
        sc.novel_sentence = lambda r, text: "".join(chr(0xAC00 + r.randrange(11172)) for _ in range(6))
        other = [u for u in plan(SampleOptions(utterances=300, seed=4)) if u.split != "eval_novel"]
    finally:
        sc.novel_sentence = original
    assert full == other


@pytest.mark.parametrize("variety", sorted(VARIETIES))
def test_eval_other_voices_are_never_heard_in_training(variety):
    """eval_other measures voices a model never trained on: no train, dev or eval_clean utterance uses them, and
    the sample noise set's babble uses voices of neither list. The recipe's wide variety really is wide."""
    from korasr.data.noise import BABBLE_VOICES

    utts = plan(SampleOptions(utterances=2500, seed=0, variety=variety))
    heard = {u.voice for u in utts if u.split != "eval_other"}
    other = {u.voice for u in utts if u.split == "eval_other"}
    assert heard == set(VARIETIES[variety].voices) and len(other) >= 3 and not heard & other
    assert not set(BABBLE_VOICES) & (heard | other)
    train, hard = ([u for u in utts if u.split == s] for s in ("train", "eval_other"))
    assert max(u.speed for u in hard) > max(u.speed for u in train)  # eval_other is faster, too
    if variety == SampleOptions().variety:  # the recipe's default
        speeds, pitches = [u.speed for u in train], [u.pitch for u in train]
        assert len(heard) >= 10 and max(speeds) - min(speeds) >= 60 and max(pitches) - min(pitches) >= 40


def test_varieties_are_the_clis_choices_and_unknown_ones_are_refused():
    from korasr.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["sample-corpus"]
    assert set(next(a for a in sub._actions if a.dest == "variety").choices) == set(VARIETIES)
    assert set(next(a for a in sub._actions if a.dest == "text").choices) == set(TEXTS)
    with pytest.raises(ValueError, match="variety must be one of"):
        plan(SampleOptions(variety="loud"))


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "KsponSpeech"
    return make_sample_corpus(root, SampleOptions(utterances=120, seed=3, synth="tone"), jobs=2, progress=False)


def test_layout_and_encodings_match_ksponspeech(tone_corpus):
    root = tone_corpus
    assert sorted(p.name for p in (root / "KsponSpeech_scripts").iterdir()) == [
        "dev.trn",
        "eval_clean.trn",
        "eval_novel.trn",
        "eval_other.trn",
        "train.trn",
    ]
    for split in ("train", "dev", "eval_clean", "eval_other", "eval_novel"):
        lines = (root / "KsponSpeech_scripts" / f"{split}.trn").read_text(encoding="utf-8").splitlines()
        for line in lines:
            rel, raw = line.split(" :: ", 1)
            if split.startswith("eval"):
                assert re.fullmatch(rf"KsponSpeech_eval/{split}/KsponSpeech_E\d{{5}}\.pcm", rel)
            else:
                assert re.fullmatch(r"KsponSpeech_0[1-5]/KsponSpeech_\d{4}/KsponSpeech_\d{6}\.pcm", rel)
            pcm = root / rel
            assert pcm.stat().st_size > 16000
            assert pcm.with_suffix(".txt").read_bytes().decode("cp949") == raw
    record = json.loads((root / "sample.json").read_text())
    assert record["utterances"] == {"train": 120, "dev": 10, "eval_clean": 10, "eval_other": 10, "eval_novel": 10}


def test_same_seed_same_bytes_and_rerun_skips(tone_corpus, tmp_path):
    again = make_sample_corpus(tmp_path / "K", SampleOptions(utterances=120, seed=3, synth="tone"), progress=False)
    for path in tone_corpus.rglob("*.pcm"):
        assert (again / path.relative_to(tone_corpus)).read_bytes() == path.read_bytes()
    before = (again / "sample.json").stat().st_mtime_ns
    make_sample_corpus(again, SampleOptions(utterances=120, seed=3, synth="tone"), progress=False)
    assert (again / "sample.json").stat().st_mtime_ns == before
    other = plan(SampleOptions(utterances=120, seed=4))
    assert [u.raw for u in other] != [u.raw for u in plan(SampleOptions(utterances=120, seed=3))]


@pytest.mark.slow
def test_espeak_corpus_is_real_deterministic_speech_and_prepares(tmp_path):
    root = tmp_path / "KsponSpeech"
    cmd = korasr_cmd("sample-corpus", str(root), "--utterances", "40", "--seed", "1", "--quiet")
    subprocess.run(cmd, check=True)
    first = {p: p.read_bytes() for p in root.rglob("*.pcm")}
    subprocess.run(
        korasr_cmd(
            "sample-corpus", str(tmp_path / "again"), "--utterances", "40", "--seed", "1", "--quiet", "--jobs", "1"
        ),
        check=True,
    )
    for path, data in first.items():
        assert (tmp_path / "again" / path.relative_to(root)).read_bytes() == data
    record = json.loads((root / "sample.json").read_text())
    assert record["engine"].startswith("espeak-ng")

    def stats(split: str) -> tuple[float, float]:
        """Mean duration and mean noise floor (RMS of the quietest 10% of 20 ms frames)."""
        durations, floors = [], []
        for rel in (root / "KsponSpeech_scripts" / f"{split}.trn").read_text().splitlines():
            data = (root / rel.split(" :: ")[0]).read_bytes()
            x = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64)
            durations.append(x.size / 16000)
            frames = x[: x.size // 320 * 320].reshape(-1, 320)
            rms = np.sqrt((frames**2).mean(axis=1))
            floors.append(np.sort(rms)[: max(1, rms.size // 10)].mean())
        return float(np.mean(durations)), float(np.mean(floors))

    clean, other = stats("eval_clean"), stats("eval_other")
    assert 1.0 < clean[0] < 10.0  # seconds of speech, not silence or a stub
    assert other[1] > 5 * max(clean[1], 1.0)  # eval_other carries added noise

    out = tmp_path / "m"
    subprocess.run(
        korasr_cmd(
            "prepare", "kspon", "--root", str(root), "--out", str(out), "--audio-dir", str(tmp_path / "a"), "--quiet"
        ),
        check=True,
    )
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["counts"]["train"]["utterances"] == 37  # 3 planted defects are rejected
    assert summary["counts"]["train"]["rejects_by_reason"] == {"empty transcript": 2, "malformed markup": 1}
