"""The greedy-hangul decoder (korasr.runtime.hangul): CTC's best path restricted to whole Hangul syllables. On made
log-probabilities: it is the best well-formed path (checked against every path of small cases), it is greedy's path
wherever greedy's spells whole syllables, and it never writes an orphan jamo. On the suite's trained model: the same
texts from the .nemo (korasr evaluate) and the export (the runtime), none with an orphan, and greedy's texts wherever
greedy's had none."""

from __future__ import annotations

import itertools
import json
import unicodedata

import numpy as np
import pytest

from korasr.runtime.ctc import best_path, collapse
from korasr.runtime.hangul import HangulPath
from korasr.runtime.results import tokens_text
from korasr.text.codec import count_ill_formed
from tests.conftest import eval_rows, run

# conjoining jamo: initials ᄎ ᄋ ᄅ, vowels ᅡ ᅳ, finals ᆼ ᆯ; a word boundary; a digit; a piece spelling a whole syllable
PIECES = ["\u110e", "\u110b", "\u1105", "\u1161", "\u1173", "\u11bc", "\u11af", "\u2581", "3", "\u2581\u110b\u1173"]
BLANK = len(PIECES)


def text(path: list[int]) -> str:
    return "".join(PIECES[t] for t, _ in collapse(path, BLANK))


def well_formed(path: list[int]) -> bool:
    return count_ill_formed(text(path)) == 0


def score(logprobs: np.ndarray, path: list[int]) -> float:
    return float(sum(logprobs[t, label] for t, label in enumerate(path)))


def random_logprobs(rng: np.random.Generator, frames: int, peaked: bool = False) -> np.ndarray:
    logits = rng.normal(size=(frames, BLANK + 1)) * (6.0 if peaked else 1.5)
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_an_orphan_initial_becomes_the_final_the_model_nearly_chose():
    """Greedy hears 차 + an initial ᄋ with no vowel + 를 (written 차ㅇ를); the second choice on that frame, the final
    ᆼ, spells 창를: the constrained path takes it."""
    frames = [0, 3, 1, 2, 4, 6]  # ᄎ ᅡ ᄋ ᄅ ᅳ ᆯ
    lp = np.full((len(frames), BLANK + 1), -8.0)
    for t, label in enumerate(frames):
        lp[t, label] = -0.1
    lp[2, 5] = -0.3  # the final ᆼ, nearly as likely as the initial ᄋ there
    assert tokens_text(PIECES, [t for t, _ in collapse(best_path(lp), BLANK)], "char-jamo") == "차ㅇ를"
    assert tokens_text(PIECES, [t for t, _ in collapse(HangulPath(PIECES).path(lp), BLANK)], "char-jamo") == "창를"


def test_it_is_the_best_well_formed_path_of_every_small_case():
    rng, decoder = np.random.default_rng(0), HangulPath(PIECES)
    paths = np.array([p for p in itertools.product(range(BLANK + 1), repeat=4) if well_formed(list(p))])
    assert 0 < len(paths) < (BLANK + 1) ** 4
    for case in range(60):
        lp = random_logprobs(rng, 4)
        best = lp[np.arange(4), paths].sum(axis=1).max()  # every well-formed path of 4 frames, scored
        for got in (decoder.path(lp), decoder.search(lp)):  # the search itself too, greedy's path well-formed or not
            assert well_formed(got) and len(got) == 4
            assert score(lp, got) == pytest.approx(best, abs=1e-9), case


def test_it_is_greedys_path_wherever_greedys_spells_whole_syllables_and_never_writes_an_orphan():
    rng, decoder = np.random.default_rng(1), HangulPath(PIECES)
    same = 0
    for _ in range(300):
        lp = random_logprobs(rng, int(rng.integers(1, 40)), peaked=True)
        got, greedy = decoder.path(lp), best_path(lp)
        assert well_formed(got)
        if well_formed(greedy):
            assert got == greedy and decoder.search(lp) == greedy  # the search finds greedy's path itself
            same += 1
    assert 0 < same < 300  # both kinds of case occurred


def test_a_vocabulary_without_jamo_decodes_as_greedy():
    syllables = ["\u2581안", "녕", "하", "세", "요"]
    lp = random_logprobs(np.random.default_rng(2), 30)[:, : len(syllables) + 1]
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    decoder = HangulPath(syllables)
    assert decoder.trivial and not HangulPath(PIECES).trivial
    assert decoder.path(lp) == best_path(lp)


def has_orphan(text: str) -> bool:
    """Whether a decoded text holds a jamo of no syllable (the codec writes it as a compatibility jamo)."""
    return any(0x3131 <= ord(c) <= 0x318E for c in text)


def hyps(path) -> list[str]:  # type: ignore[no-untyped-def]
    return [json.loads(line)["hyp"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_the_nemo_and_the_export_agree_and_only_greedys_malformed_texts_change(trained, exported, recipe, tmp_path):
    """korasr evaluate --decoder greedy --decoder greedy-hangul on the .nemo and on its export: the same
    greedy-hangul texts from both (NeMo's log-probs and the runtime's), none with an orphan jamo, each equal to
    greedy's where greedy's had none; and no split more than half a CER point worse than greedy (a changed word can
    still be wrong)."""
    manifests = [
        a for s in ("eval_clean", "eval_other") for a in ("--manifest", str(recipe["manifests"] / f"{s}.jsonl"))
    ]
    texts = {}
    for name, model in (("nemo", trained), ("export", exported)):
        out = tmp_path / name
        run("evaluate", "--model", str(model), "--out", str(out), "--quiet", *manifests,
            "--decoder", "greedy", "--decoder", "greedy-hangul")  # fmt: skip
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))["splits"]
        for split in ("eval_clean", "eval_other"):
            # it changes only greedy's malformed words; a changed word may still be wrong, never by much in all
            assert report[f"{split} · greedy-hangul"]["cer"] <= report[f"{split} · greedy"]["cer"] + 0.5
            greedy, hangul = hyps(out / f"{split}.greedy.hyp.jsonl"), hyps(out / f"{split}.greedy_hangul.hyp.jsonl")
            texts[name, split] = hangul
            for g, h in zip(greedy, hangul, strict=True):
                assert not has_orphan(h), h
                if not has_orphan(g):
                    assert h == g
    assert texts["nemo", "eval_clean"] == texts["export", "eval_clean"]
    assert texts["nemo", "eval_other"] == texts["export", "eval_other"]
    # no decoder named (make train's table, make register, the retraining gate): greedy-hangul, under the plain names
    run("evaluate", "--model", str(trained), "--out", str(tmp_path / "default"), "--quiet", *manifests)
    report = json.loads((tmp_path / "default" / "report.json").read_text(encoding="utf-8"))
    assert sorted(report["splits"]) == ["eval_clean", "eval_other"] and report["meta"]["decoder"] == "greedy-hangul"
    assert hyps(tmp_path / "default" / "eval_clean.hyp.jsonl") == texts["nemo", "eval_clean"]
    assert "- decoder: greedy-hangul" in (tmp_path / "default" / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_service_and_the_cli_take_the_decoder(exported, recipe):
    """greedy-hangul is a jamo model's decoder wherever none is named (the runtime, the service, the CLI); greedy
    is there when asked for."""
    from fastapi.testclient import TestClient

    from korasr.runtime import Recognizer
    from korasr.serve import ServeConfig, create_app

    candidates = eval_rows(recipe, 60)
    recognizer = Recognizer(exported)
    assert recognizer.default_decoder == "greedy-hangul" and recognizer.hangul is not None
    recognizer.use_decoder("greedy")
    greedy = [r.text for r in recognizer.transcribe([row["audio_filepath"] for row in candidates])]
    orphan = [i for i, t in enumerate(greedy) if has_orphan(t)]
    assert orphan, "greedy wrote no orphan jamo on 60 eval_clean clips: nothing here for the decoder to change"
    kept = [i for i in range(60) if i not in orphan][:2]
    rows = [candidates[i] for i in orphan[:4] + kept]
    expected = [r.text for r in Recognizer(exported).transcribe([row["audio_filepath"] for row in rows])]
    changed = len(orphan[:4])
    assert all(expected[k] != greedy[i] for k, i in enumerate(orphan[:4]))  # each malformed text changed
    assert expected[changed:] == [greedy[i] for i in kept]  # the well-formed ones did not
    assert not any(has_orphan(t) for t in expected)
    for decoder, want in (
        (None, expected),
        ("greedy-hangul", expected),
        ("greedy", [greedy[i] for i in orphan[:4] + kept]),
    ):
        with TestClient(create_app(ServeConfig(model=exported, decoder=decoder, api_key=None))) as client:
            for row, text in zip(rows, want, strict=True):
                with open(row["audio_filepath"], "rb") as f:
                    got = client.post("/v1/transcribe", files={"audio": ("a.wav", f.read(), "audio/wav")})
                assert got.status_code == 200 and got.json()["text"] == text, (decoder, got.text)
        printed = run("transcribe", "--model", str(exported), *(["--decoder", decoder] if decoder else []),
                      *[row["audio_filepath"] for row in rows]).stdout.splitlines()  # fmt: skip
        assert [unicodedata.normalize("NFC", line) for line in printed] == want, decoder
    with pytest.raises(ValueError, match="beam decoder"):
        recognizer.use_decoder("greedy-hangul", hotwords=[object()])
