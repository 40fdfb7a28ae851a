"""How Korean speakers read numbers: Sino-Korean (일, 이, 삼) and native (하나, 둘 / 한, 두) readings.

Used to write the pronunciation side of dual transcriptions such as ``(3시)/(세 시)`` in the sample corpus.
"""

from __future__ import annotations

_SINO_DIGITS = ["", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구"]
_SINO_UNITS = ["", "십", "백", "천"]
_NATIVE_TENS = ["", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔"]
_NATIVE_ONES = ["", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟", "아홉"]
# Before a counter (세 시, 두 명) a few native numbers shorten.
_NATIVE_ONES_ATTRIBUTIVE = ["", "한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉"]

LATIN_LETTERS = {
    "A": "에이", "B": "비", "C": "시", "D": "디", "E": "이", "F": "에프", "G": "지", "H": "에이치",
    "I": "아이", "J": "제이", "K": "케이", "L": "엘", "M": "엠", "N": "엔", "O": "오", "P": "피",
    "Q": "큐", "R": "알", "S": "에스", "T": "티", "U": "유", "V": "브이", "W": "더블유", "X": "엑스",
    "Y": "와이", "Z": "지",
}  # fmt: skip


def _sino_below_10000(n: int) -> str:
    out = []
    for power in (3, 2, 1, 0):
        digit = n // 10**power % 10
        if digit == 0:
            continue
        # 십, 백, 천 are read without 일 before them (백 원, not 일백 원).
        word = "" if digit == 1 and power > 0 else _SINO_DIGITS[digit]
        out.append(word + _SINO_UNITS[power])
    return "".join(out)


def sino(n: int) -> str:
    """Sino-Korean reading of 0 ≤ n < 10^8, written without spaces (만 groups as speakers say them)."""
    if not 0 <= n < 10**8:
        raise ValueError(f"sino() reads 0 ≤ n < 10^8, not {n}")
    if n == 0:
        return "영"
    man, rest = divmod(n, 10000)
    head = ("" if man == 1 else _sino_below_10000(man)) + "만" if man else ""
    return head + _sino_below_10000(rest)


def native(n: int, attributive: bool = True) -> str:
    """Native Korean reading of 1 ≤ n ≤ 99; ``attributive`` gives the form used before a counter (한, 두, 세)."""
    if not 1 <= n <= 99:
        raise ValueError(f"native() reads 1 ≤ n ≤ 99, not {n}")
    tens, ones = divmod(n, 10)
    if attributive and n == 20:
        return "스무"
    ones_words = _NATIVE_ONES_ATTRIBUTIVE if attributive else _NATIVE_ONES
    return _NATIVE_TENS[tens] + ones_words[ones]


def digits(text: str) -> str:
    """Digit-by-digit Sino reading (phone numbers, decimals after the point): 0 is 공."""
    return " ".join("공" if d == "0" else _SINO_DIGITS[int(d)] for d in text)


def letters(acronym: str) -> str:
    """How an English acronym is read out in Korean: KTX → 케이티엑스."""
    return "".join(LATIN_LETTERS[c] for c in acronym.upper())


def has_final(word: str) -> bool:
    """Whether the last syllable of ``word`` has a final consonant (받침); digits are read as Sino-Korean."""
    last = word[-1]
    if last.isdigit():
        last = sino(int(last))[-1] if last != "0" else "영"
    code = ord(last) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0
