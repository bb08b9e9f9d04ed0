"""KQL tokens, and the one place that formats a query error with a caret."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kinodb._textwidth import char_width
from kinodb.errors import QuerySyntaxError

# Token kinds.
WORD, STRING, NUMBER, OP, LPAREN, RPAREN, COMMA, END = (
    "word", "string", "number", "operator", "(", ")", ",", "end of query",
)  # fmt: skip

# Reserved in field position; in value position only true/false/null/none are special
# (any other bare word is a string, as in kinodb 0.1).
KEYWORDS = frozenset(
    ["and", "or", "not", "in", "is", "null", "none", "true", "false", "between", "contains",
     "starts", "ends", "with", "matches"]
)  # fmt: skip

# A bare word: identifier characters, optionally dotted (``extra.scene``), optionally
# ending in a dot right before a quote (``extra."odd name"``).
WORD_RE = re.compile(r"[^\W\d]\w*(?:\.\w+)*(?:\.(?=['\"]))?")
NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_BAD_NUMBER_TAIL = re.compile(r"[\w.]+")
_OPERATORS = ("!=", "<=", ">=", "=", "<", ">")
# Spellings from other languages, with what to write instead.
_MISSPELLED = {"==": "=", "<>": "!=", "&&": "AND", "||": "OR", "&": "AND", "|": "OR", "!": "NOT or !="}
ESCAPES = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "t": "\t"}


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind, source text, literal value and start position."""

    kind: str
    text: str
    value: str | int | float
    pos: int

    def describe(self) -> str:
        """The token as an error message names it."""
        if self.kind == END:
            return "the end of the query"
        if self.kind == WORD and self.text.lower() in KEYWORDS:
            return f"the keyword {self.text.upper()}"
        return f"{self.text!r}" if self.kind != STRING else f"the string {self.text}"


def query_error(text: str, pos: int, message: str, hints: Iterable[str] = ()) -> QuerySyntaxError:
    """A `QuerySyntaxError` whose message shows the query with a caret under ``pos``."""
    pos = max(0, min(pos, len(text)))
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end >= 0 else len(text)]
    # Keep tabs in the caret line, and pad wide characters (CJK, emoji) with two spaces, so
    # the caret stays under the character.
    pad = "".join(c if c == "\t" else " " * char_width(c) for c in text[start:pos])
    where = f"position {pos}"
    if "\n" in text:
        where += f" (line {text.count(chr(10), 0, pos) + 1}, column {pos - start + 1})"
    lines = [f"{message} at {where}", f"  {line}", f"  {pad}^", *hints]
    return QuerySyntaxError("\n".join(lines), pos)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an END token.

    Raises:
        QuerySyntaxError: a character that starts no token, a bad number or string.
    """
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "'\"":
            value, end = _string(text, i)
            tokens.append(Token(STRING, text[i:end], value, i))
            i = end
        elif (m := NUMBER_RE.match(text, i)) is not None:
            tokens.append(_number(text, m))
            i = m.end()
        elif (m := WORD_RE.match(text, i)) is not None:
            tokens.append(Token(WORD, m.group(), m.group(), i))
            i = m.end()
        elif c in "(),":
            tokens.append(Token({"(": LPAREN, ")": RPAREN, ",": COMMA}[c], c, c, i))
            i += 1
        else:
            i = _operator(text, i, tokens)
    tokens.append(Token(END, "", "", n))
    return tokens


def _operator(text: str, i: int, tokens: list[Token]) -> int:
    for bad, good in _MISSPELLED.items():
        if text.startswith(bad, i) and not (bad == "!" and text.startswith("!=", i)):
            raise query_error(text, i, f"{bad!r} is not a KQL operator; write {good}")
    for op in _OPERATORS:
        if text.startswith(op, i):
            tokens.append(Token(OP, op, op, i))
            return i + len(op)
    raise query_error(text, i, f"unexpected character {text[i]!r}")


def _string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\":
            esc = text[i + 1 : i + 2]
            if esc not in ESCAPES:
                shown = f"\\{esc}" if esc else "\\ at the end"
                raise query_error(
                    text, i, f"unknown escape {shown} in a string",
                    ["escapes are \\' \\\" \\\\ \\n \\t"],
                )  # fmt: skip
            out.append(ESCAPES[esc])
            i += 2
        else:
            out.append(c)
            i += 1
    raise query_error(text, start, "unterminated string", [f"close it with {quote}"])


def _number(text: str, m: re.Match[str]) -> Token:
    raw, pos = m.group(), m.start()
    tail = _BAD_NUMBER_TAIL.match(text, m.end())
    if tail is not None:  # ``5x``, ``1.2.3``, ``1e``: one bad token, not a number and a word
        raise query_error(text, pos, f"invalid number {raw + tail.group()!r}",
                          ["quote it to compare text: '...'"])  # fmt: skip
    if any(c in raw for c in ".eE"):
        value: int | float = float(raw)
        if value in (float("inf"), float("-inf")):
            raise query_error(text, pos, f"number {raw} is out of range")
    else:
        try:
            value = int(raw)
        except ValueError:  # beyond Python's digit limit for int()
            raise query_error(text, pos, f"number with {len(raw)} digits is out of range") from None
    return Token(NUMBER, raw, value, pos)
