"""Every metric on hand-checked reference/hypothesis pairs, the jamo-slot analysis, and the report files."""

from __future__ import annotations

import json
import subprocess

import pytest

from korasr.metrics import jamo_analysis, space_normalize, syllable_parts
from korasr.report import split_scores, update_results
from tests.conftest import korasr_cmd

# (reference, hypothesis) → CER, CER+sp, WER, sWER in percent, worked out by hand:
CASES = {
    # spaces differ only: 5 syllables all right; 6 characters with the space, one deleted; 2 words → 1 word
    # (1 sub + 1 del); re-spaced like the reference the hypothesis is right.
    "space only": (("회사 선배가", "회사선배가"), (0.0, 16.67, 100.0, 0.0)),
    # one dropped coda (학 → 하): 1 of 2 syllables, 1 of 1 word
    "dropped coda": (("학교", "하교"), (50.0, 50.0, 100.0, 100.0)),
    # one inserted syllable: 1 of 5 syllables, 1 of 6 characters, 1 of 2 words (re-spacing keeps 김밥을 a word)
    "inserted syllable": (("김밥 주세요", "김밥을 주세요"), (20.0, 16.67, 50.0, 50.0)),
    # nothing recognized: everything deleted
    "empty hypothesis": (("안녕 하세요", ""), (100.0, 100.0, 100.0, 100.0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_checked_pairs(name):
    (ref, hyp), (c, c_sp, w, sw) = CASES[name]
    scores = split_scores([ref], [hyp])
    assert (scores["cer"], scores["cer_space"], scores["wer"], scores["swer"]) == (c, c_sp, w, sw)


def test_an_empty_reference_counts_insertions_against_the_corpus():
    # alone, an empty reference with an insertion has no finite rate: reported as null, not Infinity
    alone = split_scores([""], ["네"])
    assert alone["cer"] is None and alone["wer"] is None
    assert split_scores([""], [""])["cer"] == 0.0
    # within a corpus the insertion adds to the errors: 1 error over the 2 syllables / 1 word of the other line
    scores = split_scores(["학교", ""], ["학교", "네"])
    assert (scores["cer"], scores["cer_space"], scores["wer"], scores["swer"]) == (50.0, 50.0, 100.0, 100.0)
    json.dumps(alone, allow_nan=False)  # strict JSON


def test_jamo_slots_of_the_hand_checked_pairs():
    coda = jamo_analysis(["학교"], ["하교"])
    assert coda["coda"] == {"rate": 100.0, "ref": 1, "sub": 0, "del": 1, "ins": 0}
    assert coda["onset"]["rate"] == coda["nucleus"]["rate"] == 0.0
    assert coda["confusions"] == [["학", "하", 1]]
    # an inserted syllable inserts each of its slots: 을 = ㅇ + ㅡ + ㄹ; 김밥 has two codas
    inserted = jamo_analysis(["김밥 주세요"], ["김밥을 주세요"])
    assert inserted["onset"] == {"rate": 20.0, "ref": 5, "sub": 0, "del": 0, "ins": 1}
    assert inserted["coda"] == {"rate": 50.0, "ref": 2, "sub": 0, "del": 0, "ins": 1}
    # a deleted syllable deletes its slots: everything of 안녕하세요 (codas ㄴ, ㅇ)
    empty = jamo_analysis(["안녕 하세요"], [""])
    assert [empty[s]["del"] for s in ("onset", "nucleus", "coda")] == [5, 5, 2]
    # substitutions inside a syllable: 갔 → 갖 is a coda substitution, 가 → 각 a coda insertion
    mixed = jamo_analysis(["갔다 가요"], ["갖다 각요"])
    assert mixed["coda"] == {"rate": 200.0, "ref": 1, "sub": 1, "del": 0, "ins": 1}  # 2 errors, 1 coda
    assert mixed["onset"]["rate"] == mixed["nucleus"]["rate"] == 0.0


def test_broken_syllables_score_the_slots_they_kept():
    # a jamo model that loses the nucleus and coda of 학 leaves a lone ㅎ (compatibility jamo after composition)
    result = jamo_analysis(["학교"], ["ㅎ교"])
    assert result["onset"]["rate"] == 0.0
    assert result["nucleus"] == {"rate": 50.0, "ref": 2, "sub": 0, "del": 1, "ins": 0}
    assert result["coda"]["del"] == 1
    # a character that is not Hangul in the hypothesis is wrong in every slot it fills
    other = jamo_analysis(["학"], ["1"])
    assert (other["onset"]["sub"], other["nucleus"]["sub"], other["coda"]["del"]) == (1, 1, 1)
    # references that are not Hangul are left out of the slot counts
    assert jamo_analysis(["KTX 타"], ["KTX 타"])["onset"]["ref"] == 1


def test_syllable_parts():
    assert syllable_parts("각") == ("\u1100", "\u1161", "\u11a8")
    assert syllable_parts("가") == ("\u1100", "\u1161", "")
    assert syllable_parts("ㅎ") == ("\u1112", "", "")
    assert syllable_parts("ㅏ") == ("", "\u1161", "")
    assert syllable_parts("ㄳ") == ("", "", "\u11aa")  # no onset form exists: a coda
    assert syllable_parts("A") is None


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("회사 선배가 자전거를", "회사선배 가자전거를", "회사 선배가 자전거를"),
        ("아 가방이", "아가방이요", "아 가방이요"),  # an insertion joins the word before it
        ("가나 다라", "가나라", "가나 라"),  # the word start 다 was deleted: the break moves to the next character
        ("가 나", "", ""),
        ("", "가 나", "가나"),
    ],
)
def test_space_normalize(ref, hyp, expected):
    assert space_normalize(ref, hyp) == expected


def test_results_rows_replace_the_same_model_and_split(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nHand-written notes stay.\n", encoding="utf-8")

    def report(cer_hyp: str, model: str) -> dict:
        return {
            "model": model,
            "meta": {"date": "2026-11-29", "git_commit": "abc", "command": "korasr evaluate | x"},
            "splits": {"eval_clean": split_scores(["학교"], [cer_hyp])},
        }

    update_results(md, report("하교", "/m/a.nemo"))
    update_results(md, report("학교", "/m/b.nemo"))
    update_results(md, report("학교", "/m/a.nemo"))  # a's row is replaced, not added
    text = md.read_text(encoding="utf-8")
    assert "Hand-written notes stay." in text
    rows = [line for line in text.splitlines() if line.startswith("| 2026")]
    assert len(rows) == 2
    assert all("**0.00**" in row for row in rows)
    assert "korasr evaluate \\| x" in text  # a pipe in a cell is escaped
    # the same model and split scored by another decoder is another row, named by it
    other = report("하교", "/m/a.nemo")
    other["meta"]["decoder"] = "greedy-hangul"
    update_results(md, other)
    rows = [line for line in md.read_text(encoding="utf-8").splitlines() if line.startswith("| 2026")]
    assert len(rows) == 3 and sum("| eval_clean · greedy-hangul |" in row for row in rows) == 1


def test_score_recomputes_a_report_without_a_model(tmp_path):
    hyps = tmp_path / "eval_clean.hyp.jsonl"
    pairs = [("학교에 갔다", "하교에 갔다"), ("김밥 주세요", "김밥 주세요")]
    hyps.write_text(
        "".join(
            json.dumps({"utt_id": i, "ref": r, "hyp": h}, ensure_ascii=False) + "\n" for i, (r, h) in enumerate(pairs)
        ),
        encoding="utf-8",
    )
    proc = subprocess.run(korasr_cmd("score", str(hyps), "--max-cer", "5"), capture_output=True, text=True)
    assert proc.returncode == 1 and "gate failed" in proc.stderr  # 1 of 10 syllables = 10% > 5%
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    clean = report["splits"]["eval_clean"]
    assert clean["cer"] == 10.0 and clean["jamo"]["coda"]["del"] == 1
    assert set(report["meta"]) >= {"command", "git_commit", "versions", "definitions", "date"}
    assert "| eval_clean | 2 | **10.00**" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert (tmp_path / "error_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ok = subprocess.run(korasr_cmd("score", str(hyps), "--max-cer", "10"), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
