"""KsponSpeech normalization: one table row per rule, then properties over arbitrary strings."""

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from korasr.text import MARKUP_CHARS, MalformedTranscript, normalize, normalize_text

# (raw, form, disfluency, expected)
TABLE = [
    # dual transcription
    ("(3시)/(세 시)에 보자", "spelling", "df", "3시에 보자"),
    ("(3시)/(세 시)에 보자", "phonetic", "df", "세 시에 보자"),
    ("(5월)/(오 월 )달에 가요", "phonetic", "df", "오 월달에 가요"),  # stray space inside a pair
    ("( 5월 )/( 오  월)달", "spelling", "df", "5월달"),
    ("(KTX)/(케이티엑스) 타자", "spelling", "df", "KTX 타자"),
    ("(KTX)/(케이티엑스) 타자", "phonetic", "df", "케이티엑스 타자"),
    ("(3시) / (세 시)", "spelling", "df", "3시"),  # spaces around the slash
    # a marker after a whole pair applies to the pair
    ("(2명)/(두 명)+ 두 명이요", "phonetic", "df", "두 명 두 명이요"),
    ("(2명)/(두 명)+ (2명)/(두 명)이요", "spelling", "dt", "2명+ 2명이요"),
    ("(2명)/(두 명)+ (2명)/(두 명)이요", "phonetic", "fl", "두 명이요"),
    ("(뭐)/(머)/ 그래", "spelling", "df", "뭐 그래"),
    ("(뭐)/(머)/ 그래", "phonetic", "dt", "머/ 그래"),
    ("(뭐)/(머)/ 그래", "spelling", "fl", "그래"),
    # noise tags
    ("o/ b/ 그래서 갔어", "spelling", "df", "그래서 갔어"),
    ("l/ 진짜 n/ 웃겨", "spelling", "df", "진짜 웃겨"),
    ("u/ 그거 줘", "spelling", "df", "그거 줘"),
    ("o/b/그래", "spelling", "df", "그래"),  # tags glued to each other and to the word
    ("들어서.b/", "spelling", "df", "들어서"),  # glued to punctuation
    ("그래 b/.", "spelling", "df", "그래"),
    ("그래 b/.", "spelling", "dt", "그래"),  # tags go in every disfluency mode
    # word-boundary-safe tag matching: club/ is the filler "club", not the tag b/
    ("club/ 가자", "spelling", "df", "club 가자"),
    ("club/ 가자", "spelling", "fl", "가자"),
    ("bulb/ 켜", "spelling", "dt", "bulb/ 켜"),
    # fillers and repeats
    ("어/ 그러니까", "spelling", "df", "어 그러니까"),
    ("어/ 그러니까", "spelling", "dt", "어/ 그러니까"),
    ("어/ 그러니까", "spelling", "fl", "그러니까"),
    ("저+ 저는 학생이에요", "spelling", "df", "저 저는 학생이에요"),
    ("저+ 저는 학생이에요", "spelling", "dt", "저+ 저는 학생이에요"),
    ("저+ 저는 학생이에요", "spelling", "fl", "저는 학생이에요"),
    ("어/그러니까", "spelling", "df", "어 그러니까"),  # a marker glued to the next word
    ("어/그러니까", "spelling", "fl", "그러니까"),
    ("음/, 그래", "spelling", "df", "음 그래"),  # marker glued to punctuation
    # * marks speech under noise
    ("그게* 맞아", "spelling", "df", "그게 맞아"),
    ("그게* 맞아", "spelling", "fl", "그게 맞아"),
    ("그게* 맞아", "spelling", "dt", "그게* 맞아"),
    ("* 맞아", "spelling", "df", "맞아"),
    # sentence punctuation and numbers
    ("진짜? 응. 그래, 가자!", "spelling", "df", "진짜 응 그래 가자"),
    ("(1.5배)/(일 점 오 배) 더", "spelling", "df", "1.5배 더"),
    ("1.5배.", "spelling", "df", "1.5배"),
    ("값이 1. 5", "spelling", "df", "값이 1 5"),
    ("(5,000원)/(오천 원)이요", "spelling", "df", "5000원이요"),
    ("하나,둘", "spelling", "df", "하나 둘"),
    ("1,2등", "spelling", "df", "1 2등"),  # not a thousands comma
    # percent
    ("(70%)/(칠십 퍼센트) 할인", "spelling", "df", "70% 할인"),
    ("(70%)/(칠십 퍼센트) 할인", "phonetic", "df", "칠십 퍼센트 할인"),
    ("70% 할인", "spelling", "df", "70% 할인"),
    ("70% 할인", "phonetic", "df", "70퍼센트 할인"),  # a bare % has one reading
    # other symbols, whitespace, NFC
    ("A#B 그리고 [노래] ~ 끝", "spelling", "df", "A B 그리고 노래 끝"),
    ("  많은\t공백\u3000사이  ", "spelling", "df", "많은 공백 사이"),
    (unicodedata.normalize("NFD", "한국어 음성"), "spelling", "df", "한국어 음성"),
    # nothing left
    ("b/ n/", "spelling", "df", ""),
    ("어/ 음/", "spelling", "fl", ""),
    ("", "spelling", "df", ""),
]


@pytest.mark.parametrize(("raw", "form", "disfluency", "expected"), TABLE)
def test_rule(raw, form, disfluency, expected):
    result = normalize(raw, form, disfluency)
    assert result.ok, result.error
    assert result.text == expected


def test_unk_symbol():
    assert normalize_text("u/ 그거 줘", unk="[unk]") == "[unk] 그거 줘"
    assert normalize_text("그거 u/", unk="<unk>") == "그거 <unk>"
    # idempotent with the symbol in the text
    assert normalize_text("[unk] 그거 줘", unk="[unk]") == "[unk] 그거 줘"
    # a letter before u/ makes it a filler, not the tag
    assert normalize_text("menu/ 줘", unk="[unk]") == "menu 줘"


MALFORMED = [
    ("()/) 그래", "pronunciation side"),
    ("(3시)/() 보자", "empty side"),
    ("()/(세 시) 보자", "empty side"),
    ("(3시)/ 세 시 보자", "pronunciation side"),
    ("(3시) 보자", "not a dual pair"),
    ("그래 ) 가자", "unbalanced"),
    ("((3시)/(세 시)) 보자", "not a dual pair"),  # nested: the inner pair leaves (3시)
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED)
def test_malformed_is_reported_not_guessed(raw, reason):
    result = normalize(raw)
    assert not result.ok
    assert reason in result.error
    assert result.text == ""
    with pytest.raises(MalformedTranscript, match=re.escape(reason)):
        normalize_text(raw)


def test_rejects_unknown_modes():
    with pytest.raises(ValueError, match="form"):
        normalize("가", form="pronunciation")
    with pytest.raises(ValueError, match="disfluency"):
        normalize("가", disfluency="xx")


# --- properties --------------------------------------------------------------------------------------------
MARKUPISH = st.sampled_from([*list("()/+*.,?!%#[] blnouw"), "b/", "u/", "(3시)/(세 시)", "어/", "저+", "1.5", "\t"])
HANGUL = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
TEXTS = st.one_of(
    st.text(),
    st.lists(st.one_of(MARKUPISH, HANGUL, st.characters()), max_size=40).map("".join),
)
MODES = st.sampled_from([(f, d) for f in ("spelling", "phonetic") for d in ("df", "dt", "fl")])


@settings(max_examples=400, deadline=None)
@given(TEXTS, MODES)
def test_never_raises_and_is_idempotent(raw, mode):
    form, disfluency = mode
    result = normalize(raw, form, disfluency)
    assert isinstance(result.text, str)
    again = normalize(result.text, form, disfluency)
    assert again.ok
    assert again.text == result.text
    assert result.text == unicodedata.normalize("NFC", result.text)
    assert result.text == " ".join(result.text.split())


@settings(max_examples=400, deadline=None)
@given(TEXTS, st.sampled_from(["spelling", "phonetic"]), st.sampled_from(["df", "fl"]))
def test_no_markup_left(raw, form, disfluency):
    text = normalize(raw, form, disfluency).text
    assert not MARKUP_CHARS & set(text)
    assert not re.search(r"[,?!]", text)
    assert not re.search(r"(?<!\d)\.|\.(?!\d)", text)  # a full stop survives only as a decimal point
