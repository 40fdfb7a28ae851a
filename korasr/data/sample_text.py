"""Everyday spontaneous Korean sentences in KsponSpeech's raw transcription markup.

Two kinds of text (``TEXTS``):
- ``"templates"``: our own templates over a lexicon of a few hundred words (the sample corpus before issue 39).
- ``"open"`` (the default): those templates for 40% of the sentences, and for the rest patterns and free word
  sequences over the open-vocabulary lexicon ``lexicon/ko.tsv`` (13,737 nouns, 664 adverbs and 831 verb and
  adjective stems with their conjugated forms, from wordfreq's Korean list tagged by Kiwi; ``make lexicon``). Words
  are drawn with weight 1/sqrt(rank + 10), so frequent words recur and rare ones are still heard. A tenth of the
  lexicon (by a fixed hash of the lemma) is held out for eval_novel: no other split ever says those words.

Every sentence carries the corpus's markers at realistic rates: dual transcriptions of numbers, times, prices,
percents, decimals and English acronyms, fillers (``어/``), repeats and cut-offs (``저+ 저는``), noise tags
(``b/ n/ o/ l/ u/``), ``*`` and sentence punctuation.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from korasr.data.hotword_terms import TERMS, UNRELATED
from korasr.data.korean_numbers import digits, has_final, letters, native, sino

SUBJECTS = [
    "저", "제 친구", "우리 엄마", "우리 아빠", "동생", "선생님", "언니", "형", "누나", "오빠", "사장님",
    "할머니", "할아버지", "이모", "삼촌", "남편", "아내", "아들", "딸", "동료", "팀장님", "옆집 아저씨",
    "우리 반 친구", "사촌 동생", "회사 선배", "대학교 후배", "그 사람", "민수", "지영이", "준호",
]  # fmt: skip
PLACES = [
    "학교", "회사", "병원", "시장", "마트", "도서관", "공원", "카페", "식당", "은행", "우체국", "집",
    "지하철역", "공항", "백화점", "영화관", "편의점", "헬스장", "미용실", "약국", "바다", "놀이공원",
    "서울", "부산", "대구", "인천", "광주", "대전", "제주도", "강릉", "전주", "경주", "수원", "시골",
]  # fmt: skip
FOODS = [
    "김치찌개", "된장찌개", "비빔밥", "불고기", "떡볶이", "라면", "냉면", "삼겹살", "치킨", "피자",
    "커피", "우유", "빵", "과일", "사과", "딸기", "수박", "김밥", "만두", "국수", "짜장면", "짬뽕",
    "갈비", "순대", "떡국", "케이크", "아이스크림", "초밥", "돈가스", "샌드위치",
]  # fmt: skip
THINGS = [
    "책", "휴대폰", "가방", "우산", "지갑", "열쇠", "컴퓨터", "노트북", "옷", "신발", "모자", "안경",
    "시계", "자전거", "자동차", "선물", "편지", "사진", "표", "약", "이어폰", "충전기", "수첩", "카드",
]  # fmt: skip
TIMES = [
    "오늘", "내일", "어제", "모레", "주말에", "아침에", "점심에", "저녁에", "밤에", "요즘", "이번 주에",
    "다음 주에", "지난주에", "방학 때", "퇴근하고", "수업 끝나고", "새벽에", "아까", "나중에", "작년에",
]  # fmt: skip
ADVERBS = [
    "정말", "진짜", "너무", "아주", "좀", "많이", "조금", "빨리", "천천히", "같이", "혼자", "다시",
    "벌써", "아직", "항상", "가끔", "자주", "원래", "완전", "되게", "꼭", "제일",
]  # fmt: skip
ADJECTIVES = [
    "좋아요", "맛있어요", "비싸요", "싸요", "멀어요", "가까워요", "재미있어요", "힘들어요", "바빠요",
    "피곤해요", "추워요", "더워요", "예뻐요", "편해요", "불편해요", "어려워요", "쉬워요", "시끄러워요",
    "조용해요", "깨끗해요", "복잡해요", "신기해요", "괜찮아요", "심심해요",
]  # fmt: skip
MOVES = ["갔어요", "갈 거예요", "가고 싶어요", "다녀왔어요", "가야 돼요", "가 봤어요", "놀러 갔어"]
EATS = ["먹었어요", "먹고 싶어요", "먹을 거야", "시켰어요", "만들었어", "사 왔어요", "좋아해요"]
HAVES = ["잃어버렸어요", "샀어요", "찾았어", "빌려줬어요", "놓고 왔어요", "바꿨어요", "고쳤어요"]
CONNECTIVES = ["그래서", "근데", "그러니까", "그리고", "그러면", "아무튼", "하여튼", "그런데"]
ACRONYMS = ["KTX", "KBS", "MBC", "SNS", "TV", "PC", "USB", "IT", "AI", "CEO", "ATM", "GPS", "SUV", "PD"]
FILLERS = ["어", "음", "그", "뭐", "아", "막", "이제", "저기", "에"]
NOISE_TAGS = ["b/", "n/", "o/", "l/"]
COUNTERS_NATIVE = ["명", "개", "번", "살", "잔", "권", "마리", "시간"]


def _pair(spelling: str, spoken: str) -> str:
    return f"({spelling})/({spoken})"


def _clock(r: random.Random) -> str:
    hour = r.randint(1, 12)
    if r.random() < 0.5:
        return _pair(f"{hour}시", f"{native(hour)} 시")
    minute = r.choice([10, 15, 20, 30, 40, 45, 50])
    return _pair(f"{hour}시 {minute}분", f"{native(hour)} 시 {sino(minute)} 분")


def _count(r: random.Random) -> str:
    counter = r.choice(COUNTERS_NATIVE)
    n = r.randint(1, 30) if counter != "살" else r.randint(5, 60)
    return _pair(f"{n}{counter}", f"{native(n)} {counter}")


def _price(r: random.Random) -> str:
    won = r.choice([500, 1000, 1500, 2000, 3000, 4500, 5000, 8000, 10000, 12000, 15000, 20000, 35000, 50000])
    written = f"{won:,}원" if won >= 1000 and r.random() < 0.6 else f"{won}원"
    return _pair(written, f"{sino(won)} 원")


def _date(r: random.Random) -> str:
    month, day = r.randint(1, 12), r.randint(1, 28)
    spoken_month = {6: "유", 10: "시"}.get(month, sino(month))  # 유월, 시월
    return _pair(f"{month}월 {day}일", f"{spoken_month} 월 {sino(day)} 일")


def _percent(r: random.Random) -> str:
    p = r.choice([5, 10, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100])
    return _pair(f"{p}%", f"{sino(p)} 퍼센트")


def _decimal(r: random.Random) -> str:
    whole, frac = r.randint(1, 9), r.randint(1, 9)
    return _pair(f"{whole}.{frac}배", f"{sino(whole)} 점 {digits(str(frac))} 배")


def _acronym(r: random.Random) -> str:
    a = r.choice(ACRONYMS)
    return _pair(a, letters(a))


def _floor(r: random.Random) -> str:
    n = r.randint(1, 20)
    return _pair(f"{n}층", f"{sino(n)} 층")


def _josa(slot: str, word: str) -> str:
    """Attach the particle named by ``slot``'s suffix, agreeing with the last syllable of ``word``."""
    # A dual pair takes the particle of its spoken side.
    spoken = re.sub(r"\((?:[^()]*)\)/\(([^()]*)\)", r"\1", word)
    table = {"_s": ("이", "가"), "_t": ("은", "는"), "_o": ("을", "를"), "_w": ("과", "와")}
    for suffix, (with_final, without_final) in table.items():
        if slot.endswith(suffix):
            return word + (with_final if has_final(spoken) else without_final)
    if slot.endswith("_ro"):
        last = ord(spoken[-1]) - 0xAC00
        rieul = 0 <= last < 11172 and last % 28 == 8
        return word + ("로" if rieul or not has_final(spoken) else "으로")
    return word


_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "subj": lambda r: r.choice(SUBJECTS),
    "place": lambda r: r.choice(PLACES),
    "food": lambda r: r.choice(FOODS),
    "thing": lambda r: r.choice(THINGS),
    "time": lambda r: r.choice(TIMES),
    "adv": lambda r: r.choice(ADVERBS),
    "adj": lambda r: r.choice(ADJECTIVES),
    "move": lambda r: r.choice(MOVES),
    "eat": lambda r: r.choice(EATS),
    "have": lambda r: r.choice(HAVES),
    "conn": lambda r: r.choice(CONNECTIVES),
    "clock": _clock,
    "count": _count,
    "price": _price,
    "date": _date,
    "percent": _percent,
    "decimal": _decimal,
    "acronym": _acronym,
    "floor": _floor,
}

TEMPLATES = [
    "{time} {subj_s} {place}에 {move}.",
    "{subj_t} {time} {food_o} {eat}.",
    "{place}에서 {clock}에 만나자.",
    "{food} {price}이면 {adv} {adj}.",
    "{subj_t} {thing_o} {place}에 {have}.",
    "{acronym}에서 봤는데 {adv} {adj}.",
    "{date}에 {place_ro} {move}.",
    "{thing_t} {price}인데 {adv} {adj}?",
    "{count} {eat}.",
    "{subj_s} {count} 데리고 {place}에 {move}.",
    "{percent} 할인해서 {thing_o} {have}.",
    "{percent} 정도는 {adv} {adj}.",
    "작년보다 {decimal} 더 {adj}.",
    "{place}까지 {decimal} 정도 멀어요.",
    "{floor}에 {place} 있어요?",
    "{time} {place}에 {adv} {move}?",
    "{food} 먹을래 아니면 {food} 먹을래?",
    "{conn} {subj_s} {food_o} {adv} {eat}.",
    "{conn} {time} {place}에 {move}.",
    "{subj_w} 같이 {place}에 {move}.",
    "{acronym} 보면서 {food_o} {eat}.",
    "{clock}까지 {place_ro} 와 주세요.",
    "{thing_s} {adv} {adj}.",
    "{place_t} {adv} {adj}.",
    "{subj_s} {thing_o} {have}?",
    "{date}이 {subj} 생일이에요.",
    "{time} {clock}에 {acronym} 타고 {place}에 {move}.",
    "{subj_t} {place}에서 {food_o} {adv} {eat}.",
    "혹시 {thing} 어디 있는지 알아요?",
    "{place} 가는 길이 {adv} {adj}.",
    "{subj_s} 그러는데 {food_s} {adv} {adj}.",
    "{time} {subj_w} {food_o} {eat}.",
    "{thing_o} {price} 주고 {have}.",
    "{conn} {thing_t} {adv} {adj}.",
    "{floor} {place}에서 {clock}에 봐요.",
    "{percent} 확률로 {time} 비가 온대요.",
    "{acronym} 뉴스에서 {place} 얘기 나왔어요.",
    "{count} 시켰는데 {adv} {adj}.",
    "{subj_s} {date}에 {place_ro} {move}.",
    "{time} {place}에 가면 {food_o} {eat}.",
]


def fill(template: str, r: random.Random) -> str:
    def slot(match: re.Match[str]) -> str:
        name = match[1]
        base = re.sub(r"_(s|t|o|w|ro)$", "", name)
        return _josa(name, _SLOTS[base](r))

    return re.sub(r"\{(\w+)\}", slot, template)


def _decorate(sentence: str, r: random.Random) -> str:
    """Add the disfluency and noise markup that spontaneous speech transcripts carry."""
    words = re.findall(r"\([^()]*\)/\([^()]*\)\S*|\S+", sentence)  # a dual pair stays one word
    if r.random() < 0.15:  # a repeat or a cut-off fragment before a word
        i = r.randrange(len(words))
        word = words[i]
        if not word.startswith("(") and len(word) > 1:
            fragment = word if r.random() < 0.4 else word[: r.randint(1, len(word) - 1)]
            words.insert(i, fragment + "+")
        elif word.startswith("(") and re.fullmatch(r"\([^()]*\)/\([^()]*\)", word):
            words.insert(i, word + "+")
    if r.random() < 0.3:  # a filler
        filler = r.choice(FILLERS) + "/"
        words.insert(0 if r.random() < 0.5 else r.randrange(len(words)), filler)
    if r.random() < 0.04:
        i = r.randrange(len(words))
        if not words[i].endswith(("/", "+", ")")):
            words[i] = words[i].rstrip(".?") + "*" + words[i][len(words[i].rstrip(".?")) :]
    if r.random() < 0.02:
        words.insert(r.randrange(len(words) + 1), "u/")
    if r.random() < 0.12:
        words.insert(0, r.choice(NOISE_TAGS))
        if r.random() < 0.3:
            words.insert(0, r.choice(NOISE_TAGS))
    if r.random() < 0.04:  # a tag glued to the closing punctuation, as transcribers sometimes wrote it
        words[-1] = words[-1] + r.choice(NOISE_TAGS)
    if r.random() < 0.1 and len(words) > 3 and re.fullmatch(r"[가-힣]+", words[1]):  # a comma after the second word
        words[1] += ","
    if r.random() < 0.2 and words[-1].endswith("."):
        words[-1] = words[-1][:-1]
    return " ".join(words)


TEXTS = ("open", "templates")
LEXICON = Path(__file__).with_name("lexicon") / "ko.tsv"
FORMS = ("past", "polite", "formal", "and", "so", "but", "if", "will", "did")  # ko.tsv's verb columns
NOVEL_SHARE = 10  # one lemma in NOVEL_SHARE is eval_novel's


@dataclass(frozen=True)
class _Words:
    """One part of the lexicon (train's or eval_novel's): words of a kind, drawn by frequency."""

    nouns: tuple[str, ...]
    adverbs: tuple[str, ...]
    verbs: tuple[dict[str, str], ...]
    weights: dict[str, tuple[float, ...]]  # cumulative, per kind

    def pick(self, kind: str, r: random.Random) -> str | dict[str, str]:
        items = getattr(self, kind)
        cum = self.weights[kind]
        return items[bisect.bisect(cum, r.random() * cum[-1])]


def _template_words() -> set[str]:
    lists = (SUBJECTS, PLACES, FOODS, THINGS, TIMES, ADVERBS, ADJECTIVES, MOVES, EATS, HAVES, CONNECTIVES, FILLERS)
    return {word for words in lists for phrase in words for word in phrase.split()} | {
        word for t in TEMPLATES for word in re.sub(r"\{\w+\}", " ", t).replace(".", " ").replace("?", " ").split()
    }


def novel_lemma(lemma: str) -> bool:
    """Whether ``lemma`` is held out for eval_novel (a fixed hash: the same on every seed and machine)."""
    return zlib.crc32(lemma.encode()) % NOVEL_SHARE == 0


@functools.cache
def lexicon() -> dict[str, _Words]:
    """``ko.tsv`` split into ``"train"`` (every split but eval_novel) and ``"novel"`` words."""
    rows = [line.split("\t") for line in LEXICON.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    taken = _template_words()
    parts: dict[str, dict[str, list]] = {"train": {}, "novel": {}}
    for kind, lemma, rank, *forms in rows:
        # A word the templates say stays on train's side, whatever its hash: eval_novel must not share it.
        part = "novel" if novel_lemma(lemma) and lemma not in taken else "train"
        item = dict(zip(FORMS, forms, strict=True)) if kind == "verb" else lemma
        parts[part].setdefault(kind + "s", []).append((item, 1 / (int(rank) + 10) ** 0.5))
    out = {}
    for part, kinds in parts.items():
        for items in kinds.values():
            _stand_in_for_hotwords(items)
        fields = {kind: tuple(item for item, _ in kinds[kind]) for kind in ("nouns", "adverbs", "verbs")}
        weights = {kind: tuple(itertools.accumulate(w for _, w in kinds[kind])) for kind in fields}
        out[part] = _Words(**fields, weights=weights)
    return out


def _stand_in_for_hotwords(items: list) -> None:
    """Replace, in place, each word that says a term of the hotword evaluation set (korasr.data.hotword_set: terms
    the sample corpus must never say) by the nearest word before it that does not, keeping its weight: the draws,
    and so every other sentence of a seed, stay what they were."""

    def says(item: str | dict[str, str]) -> bool:
        words = item.values() if isinstance(item, dict) else (item,)
        return any(term in word for word in words for term in (*TERMS, *UNRELATED))

    for i, (item, weight) in enumerate(items):
        if says(item):
            j = next((j for j in range(i - 1, -1, -1) if not says(items[j][0])), None)
            if j is None:  # the list's first words all say a term: nothing before them to stand in
                raise ValueError(f"{LEXICON}: {item!r} says a hotword term and no word before it can stand in")
            items[i] = (items[j][0], weight)


def lexicon_sha256() -> str:
    return hashlib.sha256(LEXICON.read_bytes()).hexdigest()


PARTICLES = ("_s", "_t", "_o", "_w", "_ro", "에", "에서", "도", "만", "까지", "의", "")


def _open_fill(pattern: str, words: _Words, r: random.Random) -> str:
    """Fill ``{n…}`` (a noun, with ``_s``/``_t``/``_o``/``_w``/``_ro`` as in the templates), ``{a}`` (an adverb) and
    ``{v.FORM}`` (a verb in one of ``FORMS``); other slots are the templates' own."""

    def slot(match: re.Match[str]) -> str:
        name = match[1]
        if name.startswith("v."):
            return words.pick("verbs", r)[name[2:]]
        if name == "a":
            return words.pick("adverbs", r)
        if name == "n" or name.startswith("n_"):
            return _josa(name, words.pick("nouns", r))
        base = re.sub(r"_(s|t|o|w|ro)$", "", name)
        return _josa(name, _SLOTS[base](r))

    return re.sub(r"\{([\w.]+)\}", slot, pattern)


def _free(words: _Words, r: random.Random, forms: tuple[str, ...]) -> str:
    """A freer sequence: 3–6 words (nouns with a particle, adverbs), ending in a verb."""
    parts = []
    for _ in range(r.randint(2, 5)):
        pick = r.random()
        if pick < 0.6:
            particle = r.choice(PARTICLES)
            noun = words.pick("nouns", r)
            parts.append(_josa("n" + particle, noun) if particle.startswith("_") else noun + particle)
        elif pick < 0.8:
            parts.append(words.pick("adverbs", r))
        else:
            parts.append(words.pick("verbs", r)[r.choice(("and", "so", "but", "if", "did", "will"))])
    form = r.choice(forms)
    parts.append(words.pick("verbs", r)[form] + (" 거예요" if form == "will" else ""))
    return " ".join(parts) + r.choice((".", ".", "?"))


# Patterns over the open lexicon for train, dev, eval_clean and eval_other (mostly informal endings; the formal -습니다
# too, on their own verbs and in their own patterns, so that eval_novel measures words train never says, not an ending
# it never heard: without them the model wrote 채웠습니다 as 채, recipes/sample/RESULTS.md) ...
OPEN_PATTERNS = [
    "{n_t} {a} {v.past}.",
    "{time} {n_s} {n_o} {v.past}.",
    "{n}에서 {n_o} {v.and} {n_o} {v.past}.",
    "{v.did} {n_s} {n}에 있어요.",
    "{n_w} {n_t} {a} {v.polite}?",
    "{n}도 {v.so} {a} {v.past}.",
    "{subj_t} {n}까지 {v.will} 거예요.",
    "{v.if} {n_o} {v.polite}.",
    "{n}의 {n_s} {v.but} {n_t} {v.past}.",
    "{conn} {n_s} {a} {v.polite}.",
    "{time} {place}에서 {n_o} {v.past}.",
    "{n_o} {price} 주고 {v.past}.",
    "{date}에 {n_o} {v.past}.",
    "{time} {n_s} {n_o} {v.formal}.",
    "{n}에서 {v.so} {a} {v.formal}.",
    "{conn} {n_t} {n}에 {v.formal}.",
]
# ... and eval_novel's (formal -습니다 endings; every word is a held-out noun, adverb or verb form).
NOVEL_PATTERNS = [
    "{n_t} {a} {v.formal}.",
    "{n_s} {n_o} {v.so} {v.formal}.",
    "{n}에서 {n_o} {v.and} {v.formal}.",
    "{v.did} {n_s} {n_ro} {v.formal}.",
    "{a} {n_w} {n_o} {v.formal}.",
    "{n}의 {n_t} {v.but} {a} {v.formal}.",
]


def sentence(r: random.Random, text: str = "open") -> str:
    """One raw transcript in KsponSpeech markup (``text``: one of ``TEXTS``)."""
    if text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, not {text!r}")
    if text == "templates" or r.random() < 0.4:
        return _decorate(fill(r.choice(TEMPLATES), r), r)
    words = lexicon()["train"]
    if r.random() < 0.3:
        return _decorate(_free(words, r, ("past", "polite", "formal", "will")), r)
    return _decorate(_open_fill(r.choice(OPEN_PATTERNS), words, r), r)


# eval_novel, text "templates": templates and words that no train, dev, eval_clean or eval_other sentence uses
# (formal -습니다 endings, other people, places and things; no numbers, acronyms or fillers), so that a language model
# trained on the train text knows nothing of these sentences beyond the language itself. tests/test_sample_corpus.py
# checks that no normalized word of eval_novel occurs in the other splits.
NOVEL_PEOPLE = [
    "고모", "외삼촌", "손녀", "부장님", "과장님", "간호사", "교수님", "조카", "며느리", "사위", "이웃", "반장",
    "경비원", "택배 기사님", "주인아주머니", "막내",
]  # fmt: skip
NOVEL_PLACES = [
    "세탁소", "주차장", "경찰서", "소방서", "동물원", "수영장", "박물관", "미술관", "체육관", "기숙사", "터미널",
    "정류장", "부엌", "거실", "베란다", "운동장", "놀이터", "꽃집", "빵집", "문구점",
]  # fmt: skip
NOVEL_THINGS = [
    "냉장고", "세탁기", "청소기", "선풍기", "달력", "화분", "베개", "이불", "거울", "칫솔", "수건", "냄비",
    "접시", "숟가락", "젓가락", "빗자루", "목도리", "장갑", "양말", "허리띠",
]  # fmt: skip
NOVEL_ANIMALS = ["강아지", "고양이", "토끼", "거북이", "앵무새", "햄스터", "금붕어", "병아리"]
NOVEL_TIMES = [
    "어젯밤",
    "그저께",
    "한밤중에",
    "올봄에",
    "지난달",
    "연말에",
    "초저녁에",
    "이튿날",
    "한겨울에",
    "오후 내내",
]
NOVEL_ADVERBS = ["무척", "굉장히", "몹시", "상당히", "꽤", "유난히", "한층", "제법"]
NOVEL_FEELINGS = ["뿌듯했습니다", "상쾌했습니다", "개운했습니다", "서운했습니다", "허전했습니다", "든든했습니다",
                  "섭섭했습니다", "후련했습니다"]  # fmt: skip

_NOVEL_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "person": lambda r: r.choice(NOVEL_PEOPLE),
    "spot": lambda r: r.choice(NOVEL_PLACES),
    "item": lambda r: r.choice(NOVEL_THINGS),
    "pet": lambda r: r.choice(NOVEL_ANIMALS),
    "when": lambda r: r.choice(NOVEL_TIMES),
    "much": lambda r: r.choice(NOVEL_ADVERBS),
    "felt": lambda r: r.choice(NOVEL_FEELINGS),
}

NOVEL_TEMPLATES = [
    "{person_t} {spot}에서 {item_o} 닦았습니다.",
    "{item_s} 고장 나서 {person_s} 고쳐 주셨습니다.",
    "{when} {spot}에 들러서 {item_o} 맡겼습니다.",
    "{person_s} {pet_o} 안고 {spot_ro} 산책하러 나갔습니다.",
    "{spot} 근처는 {much} 붐볐습니다.",
    "{item_o} 깔끔하게 정리했더니 {much} {felt}",
    "{person_t} {pet_o} {much} 아낍니다.",
    "{spot} 앞에서 {person_o} 한참 기다렸습니다.",
    "{when} {item_w} {item_o} 챙겼습니다.",
    "{person_s} {spot}에서 {pet_o} 돌봤습니다.",
    "{item_s} 없어서 {spot}까지 다녀왔습니다.",
    "{when} {spot} 주변을 느긋하게 둘러봤습니다.",
    "{person_w} {spot}에서 우연히 마주쳤습니다.",
    "{pet_s} {item_o} 물어뜯어서 {much} {felt}",
]


def novel_sentence(r: random.Random, text: str = "open") -> str:
    """One eval_novel transcript, without disfluency markup: with ``text="open"`` a novel pattern over the held-out
    part of the open lexicon, else a novel template filled from the novel word lists."""
    if text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, not {text!r}")
    if text == "open":
        return _open_fill(r.choice(NOVEL_PATTERNS), lexicon()["novel"], r)

    def slot(match: re.Match[str]) -> str:
        name = match[1]
        return _josa(name, _NOVEL_SLOTS[re.sub(r"_(s|t|o|w|ro)$", "", name)](r))

    return re.sub(r"\{(\w+)\}", slot, r.choice(NOVEL_TEMPLATES))
