"""Build ``ko.tsv``, the sample corpus's open-vocabulary lexicon, from wordfreq's Korean list tagged by Kiwi.

Run by ``make lexicon`` in a venv of its own (``.venv-lexicon``: wordfreq 3.1.1 and kiwipiepy 0.24.1, pinned there),
so the project's venv needs neither: the file it writes is committed, and the corpus reads only that file. The same
pins give the same file byte for byte (``tests/test_sample_corpus.py`` checks the committed file's shape, not its
source).

What it keeps, from wordfreq's 30,000 most frequent Korean tokens (wordfreq splits Korean into morphemes):
- common nouns (Kiwi tag NNG) of 2–4 Hangul syllables that Kiwi reads as that one noun;
- general adverbs (MAG) of 2–4 syllables;
- verb and adjective stems (VV, VA and their irregular forms, and XR roots that take 하다), each conjugated by Kiwi
  into the forms the sentence patterns use (Kiwi applies the irregular conjugations: 돕 → 도와서, 듣 → 들었어요).
Tokens containing a word of ``BLOCKED`` are dropped: the corpus is read aloud in demos.

Columns: kind, lemma, rank (wordfreq order), then the forms (verbs only), tab-separated.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from korasr.fsutil import atomic_open  # the standard library only: this venv has no korasr installed

WORDFREQ_VERSION = "3.1.1"
KIWI_VERSION = "0.24.1"
TOP = 30_000
HANGUL = re.compile(r"[가-힣]{2,4}")
# Profanity, slurs and crude words seen in wordfreq's subtitle-heavy Korean list; a token containing one is dropped.
BLOCKED = ("씨발", "씨팔", "시발", "개새", "새끼", "병신", "존나", "좆", "좃", "지랄", "썅", "니미", "엿먹", "빠순",
           "창녀", "걸레", "섹스", "성교", "강간", "자위", "음란", "변태", "년놈", "쌍놈", "등신", "또라이", "미친",
           "닥쳐", "꺼져", "죽여", "살해", "시체", "자살", "마약", "매춘", "포르노", "야동", "성기", "항문", "불알",
           "콜걸", "성매매", "성폭", "성추행", "유흥업소", "룸살롱", "음경", "정액", "알몸", "누드", "나체", "에로",
           "애무", "젖꼭지", "호모", "정신병자", "살인마")  # fmt: skip
# The verb forms, as (ending morphemes) Kiwi joins to the stem; the names are the columns' order.
ENDINGS = {
    "past": [("었", "EP"), ("어요", "EF")],  # 먹었어요
    "polite": [("어요", "EF")],  # 먹어요
    "formal": [("었", "EP"), ("습니다", "EF")],  # 먹었습니다
    "and": [("고", "EC")],  # 먹고
    "so": [("어서", "EC")],  # 먹어서
    "but": [("지만", "EC")],  # 먹지만
    "if": [("면", "EC")],  # 먹으면
    "will": [("ᆯ", "ETM")],  # 먹을 (+ 거예요)
    "did": [("ᆫ", "ETM")],  # 먹은 / 예쁜
}
VERB_TAGS = {"VV", "VV-I", "VA", "VA-I"}


def _blocked(word: str) -> bool:
    return any(b in word for b in BLOCKED)


def build(out: Path) -> dict[str, int]:
    from importlib.metadata import version

    import wordfreq
    from kiwipiepy import Kiwi

    have = (version("wordfreq"), version("kiwipiepy"))
    if have != (WORDFREQ_VERSION, KIWI_VERSION):
        raise SystemExit(
            f"make lexicon needs wordfreq {WORDFREQ_VERSION} and kiwipiepy {KIWI_VERSION} (have {have[0]}, "
            f"{have[1]}): other versions write another file"
        )
    kiwi = Kiwi()
    rows: list[str] = []
    counts = {"noun": 0, "adverb": 0, "verb": 0}
    seen: set[tuple[str, str]] = set()
    for rank, token in enumerate(wordfreq.top_n_list("ko", TOP)):
        if not re.fullmatch(r"[가-힣]+", token) or _blocked(token):
            continue
        parts = kiwi.tokenize(token)
        if len(parts) != 1 or parts[0].form != token:
            continue
        tag = parts[0].tag
        kind, stem = None, [(token, tag)]
        if tag == "NNG" and HANGUL.fullmatch(token):
            kind = "noun"
        elif tag == "MAG" and HANGUL.fullmatch(token):
            kind = "adverb"
        elif tag in VERB_TAGS and 1 <= len(token) <= 3:
            kind = "verb"
        elif tag == "XR" and HANGUL.fullmatch(token):
            kind, stem = "verb", [(token, "XR"), ("하", "XSA")]
        if kind is None or (kind, token) in seen:
            continue
        seen.add((kind, token))
        forms: list[str] = []
        if kind == "verb":
            forms = [kiwi.join(stem + ending) for ending in ENDINGS.values()]
            if any(not re.fullmatch(r"[가-힣]+", f) or _blocked(f) for f in forms):
                continue
        counts[kind] += 1
        rows.append("\t".join([kind, token, str(rank), *forms]))
    header = (
        "# kind\tlemma\trank\t"
        + "\t".join(ENDINGS)
        + (
            f"\n# wordfreq {WORDFREQ_VERSION} Korean top {TOP} (data CC BY-SA 4.0, https://github.com/rspeer/wordfreq),"
            f" tagged and conjugated by kiwipiepy {KIWI_VERSION}; built by make lexicon (korasr/data/lexicon/build.py)"
        )
    )
    text = header + "\n" + "\n".join(rows) + "\n"
    with atomic_open(out) as f:
        f.write(text)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ko.tsv"))
    args = parser.parse_args()
    counts = build(args.out)
    print(f"{args.out}: " + ", ".join(f"{n:,} {kind}s" for kind, n in counts.items()))


if __name__ == "__main__":
    main()
