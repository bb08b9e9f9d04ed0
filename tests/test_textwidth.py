"""Terminal width of text: zero-width marks and format characters take no column, so the
caret under a query error and the clipped columns of `kino query`'s table stay aligned."""

from __future__ import annotations

import pytest

from kinodb._cli._text import fit
from kinodb._textwidth import char_width
from kinodb.kql._lexer import query_error


@pytest.mark.parametrize(
    ("ch", "width"),
    [
        ("a", 1),
        ("\u0301", 0),  # combining acute accent (combining class 230)
        ("\u0e31", 0),  # Thai MAI HAN-AKAT, a mark of combining class 0
        ("\u0902", 0),  # Devanagari anusvara, a mark of combining class 0
        ("\u20dd", 0),  # combining enclosing circle (Me)
        ("\u200d", 0),  # zero width joiner (Cf)
        ("\u200b", 0),  # zero width space (Cf)
        ("\ufe0f", 0),  # variation selector 16
        ("\u00ad", 1),  # soft hyphen: a format character that terminals show
        ("\u0940", 1),  # Devanagari vowel sign II, a spacing mark
        ("機", 2),
        ("😀", 2),
    ],
)
def test_char_width(ch: str, width: int) -> None:
    assert char_width(ch) == width


@pytest.mark.parametrize("word", ["กัน", "नहीं", "👍\ufe0f", "👨\u200d👩", "ab"])
def test_the_caret_stays_under_the_error_after_zero_width_characters(word: str) -> None:
    text = f"task = '{word}' AND foo = 1"
    lines = str(query_error(text, text.index("foo"), "unknown field 'foo'")).splitlines()
    columns = {"กัน": 2, "नहीं": 3, "👍\ufe0f": 2, "👨\u200d👩": 4, "ab": 2}[word]
    assert lines[2].index("^") == len("  task = '' AND ") + columns


def test_a_table_cell_keeps_text_whose_marks_take_no_column() -> None:
    assert fit("กันกันกัน", 6) == "กันกันกัน"  # 9 characters, 6 columns
    assert fit("กันกันกัน", 5) == "กันกัน…"
