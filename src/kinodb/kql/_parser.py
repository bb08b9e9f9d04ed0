"""Recursive-descent KQL parser: text to `kinodb.kql.ast` nodes.

Precedence, loosest first: OR, AND, NOT, then a predicate (``field op value``).
Checks that need no file happen here (null misuse, string-only operators, regex
syntax); field names and types are checked when the query meets a file.
"""

from __future__ import annotations

from kinodb.errors import QuerySyntaxError
from kinodb.kql._lexer import (
    COMMA,
    END,
    KEYWORDS,
    LPAREN,
    NUMBER,
    OP,
    RPAREN,
    STRING,
    WORD,
    Token,
    query_error,
    tokenize,
)
from kinodb.kql.ast import (
    MAX_DEPTH,
    And,
    Between,
    Compare,
    Field,
    In,
    IsNull,
    Node,
    Not,
    Or,
    Value,
    regex_problem,
)

# MAX_DEPTH: nested parentheses and NOTs; deeper queries are refused, not a RecursionError.
_OPERATORS_HINT = (
    "operators: = != < <= > >= CONTAINS, STARTS WITH, ENDS WITH, MATCHES, IN, NOT IN, BETWEEN, IS NULL"
)
_NULL_HINT = "use IS NULL or IS NOT NULL to test for null"


def parse(text: str) -> Node:
    """Parse KQL ``text`` into a syntax tree.

    Example:
        >>> parse("num_frames > 25 and not success = false").render()
        'num_frames > 25 AND NOT success = false'

    Raises:
        QuerySyntaxError: the text is not a KQL query; the message points at the position.
    """
    if not isinstance(text, str):
        raise TypeError(f"a KQL query is a str, got {type(text).__name__}")
    if not text.strip():
        raise query_error(text, 0, "empty query", ["write a condition such as: success = true"])
    parser = _Parser(text)
    node = parser.or_expr()
    tok = parser.peek()
    if tok.kind != END:
        hints = ["')' has no matching '('"] if tok.kind == RPAREN else []
        words = parser.unquoted_words()
        if words:
            hints.append(f"a value of several words needs quotes: '{words}'")
        raise parser.error(tok, f"expected AND, OR or the end of the query, got {tok.describe()}", hints)
    return node


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != END:
            self.i += 1
        return tok

    def error(
        self, tok: Token | int, message: str, hints: list[str] | tuple[str, ...] = ()
    ) -> QuerySyntaxError:
        pos = tok if isinstance(tok, int) else tok.pos
        return query_error(self.text, pos, message, hints)

    def unquoted_words(self) -> str | None:
        """The words from the bare value before the next token up to the next AND, OR,
        ')' or the end, when the next token is a plain word: ``task = put carrot on
        plate`` meant as one value (None otherwise)."""
        tok = self.peek()
        prev = self.tokens[self.i - 1] if self.i else None
        if not (
            tok.kind == WORD
            and tok.text.lower() not in KEYWORDS
            and prev is not None
            and prev.kind == WORD
            and prev.text.lower() not in KEYWORDS
        ):
            return None
        end = next(
            t.pos for t in self.tokens[self.i :]
            if t.kind in (END, RPAREN) or (t.kind == WORD and t.text.lower() in ("and", "or"))
        )  # fmt: skip
        return self.text[prev.pos : end].strip()

    def accept(self, word: str) -> Token | None:
        tok = self.peek()
        if tok.kind == WORD and tok.text.lower() == word:
            self.i += 1
            return tok
        return None

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(tok, f"the query nests deeper than {MAX_DEPTH} levels")

    # -- boolean structure ----------------------------------------------------------------

    def or_expr(self) -> Node:
        operands = [self.and_expr()]
        while self.accept("or"):
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.not_expr()]
        while self.accept("and"):
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_expr(self) -> Node:
        tok = self.peek()
        if self.accept("not"):
            self.enter(tok)
            negated = Not(self.not_expr())
            self.depth -= 1
            return negated
        if tok.kind == LPAREN:
            self.next()
            self.enter(tok)
            node = self.or_expr()
            close = self.next()
            if close.kind != RPAREN:
                raise self.error(close, f"expected ')', got {close.describe()}",
                                 [f"the '(' at position {tok.pos} is not closed"])  # fmt: skip
            self.depth -= 1
            return node
        return self.predicate()

    # -- predicates -----------------------------------------------------------------------

    def field(self) -> Field:
        tok = self.next()
        if tok.kind != WORD:
            raise self.error(tok, f"expected a field name, got {tok.describe()}")
        name = tok.text
        if name.lower() in KEYWORDS:
            raise self.error(tok, f"expected a field name, got {tok.describe()}",
                             [f"an extra field called {name!r} is written extra.{name}"])  # fmt: skip
        if name.endswith("."):  # the lexer only ends a word in '.' right before a quote
            if name != "extra.":
                raise self.error(tok, f"expected a field name, got {name!r}",
                                 ["only extra. may be followed by a quoted name: extra.'odd name'"])  # fmt: skip
            return Field(str(self.next().value), extra=True, pos=tok.pos)
        if name.startswith("extra."):
            return Field(name[len("extra.") :], extra=True, pos=tok.pos)
        return Field(name, pos=tok.pos)

    def predicate(self) -> Node:
        field = self.field()
        tok = self.next()
        if tok.kind == OP:
            value, vpos = self.value()
            if value is None:
                if tok.text not in ("=", "!="):
                    raise self.error(tok, f"null cannot be compared with {tok.text}", [_NULL_HINT])
                return IsNull(field, negated=tok.text == "!=", at=(tok.pos,))
            self.check_orderable(tok.text, value, vpos)
            return Compare(field, tok.text, value, at=(tok.pos, vpos))
        word = tok.text.lower() if tok.kind == WORD else ""
        if word in ("contains", "starts", "ends", "matches"):
            return self.text_match(field, tok, word)
        if word == "in" or (word == "not" and self.accept("in")):
            return self.in_list(field, tok, negated=word == "not")
        if word == "between":
            return self.between(field, tok)
        if word == "is":
            negated = self.accept("not") is not None
            null = self.next()
            if null.kind != WORD or null.text.lower() not in ("null", "none"):
                raise self.error(null, f"expected NULL or NOT NULL after IS, got {null.describe()}")
            return IsNull(field, negated=negated, at=(tok.pos,))
        if word == "not":
            raise self.error(tok, f"expected IN after {field.render()} NOT, got {self.peek().describe()}",
                             [f"to negate a condition, put NOT before it: NOT {field.render()} ..."])  # fmt: skip
        raise self.error(
            tok, f"expected an operator after {field.render()}, got {tok.describe()}", [_OPERATORS_HINT]
        )

    def value(self) -> tuple[Value | None, int]:
        tok = self.next()
        if tok.kind in (STRING, NUMBER):
            return tok.value, tok.pos
        if tok.kind == WORD and not tok.text.endswith("."):
            word = tok.text.lower()
            if word in ("true", "false"):
                return word == "true", tok.pos
            if word in ("null", "none"):
                return None, tok.pos
            return tok.text, tok.pos  # a bare word is a string, as in kinodb 0.1
        raise self.error(tok, f"expected a value, got {tok.describe()}",
                         ["values are 'strings', numbers, true, false or null"])  # fmt: skip

    def check_orderable(self, op: str, value: Value, pos: int) -> None:
        if op in ("<", "<=", ">", ">=", "BETWEEN") and isinstance(value, bool):
            raise self.error(pos, f"{op} needs a number or a string; true and false have no order",
                             ["use = or !="])  # fmt: skip

    def text_match(self, field: Field, tok: Token, word: str) -> Node:
        op = word.upper()
        if word in ("starts", "ends"):
            if not self.accept("with"):
                got = self.peek()
                raise self.error(got, f"expected WITH after {op}, got {got.describe()}")
            op += " WITH"
        value, vpos = self.value()
        if value is None:
            raise self.error(vpos, f"null cannot be used with {op}", [_NULL_HINT])
        if op != "CONTAINS" and not isinstance(value, str):
            shown = "true" if value is True else "false" if value is False else repr(value)
            raise self.error(vpos, f"{op} needs a string, got {shown}", [f"quote it: '{shown}'"])
        if op == "MATCHES" and (problem := regex_problem(str(value))) is not None:
            raise self.error(vpos, problem)
        return Compare(field, op, value, at=(tok.pos, vpos))

    def in_list(self, field: Field, tok: Token, *, negated: bool) -> Node:
        opening = self.next()
        if opening.kind != LPAREN:
            raise self.error(opening, f"expected '(' after IN, got {opening.describe()}",
                             ["write IN ('a', 'b')"])  # fmt: skip
        values: list[Value] = []
        positions = [tok.pos]
        while True:
            value, vpos = self.value()
            if value is None:
                raise self.error(vpos, "null never matches in an IN list", [_NULL_HINT])
            values.append(value)
            positions.append(vpos)
            sep = self.next()
            if sep.kind == RPAREN:
                return In(field, tuple(values), negated=negated, at=tuple(positions))
            if sep.kind != COMMA:
                raise self.error(sep, f"expected ',' or ')' in the IN list, got {sep.describe()}")

    def between(self, field: Field, tok: Token) -> Node:
        low, lpos = self.bound()
        if not self.accept("and"):
            got = self.peek()
            raise self.error(got, f"expected AND between the bounds of BETWEEN, got {got.describe()}")
        high, hpos = self.bound()
        if isinstance(low, str) != isinstance(high, str):
            raise self.error(hpos, "the bounds of BETWEEN must both be numbers or both be strings")
        return Between(field, low, high, at=(tok.pos, lpos, hpos))

    def bound(self) -> tuple[Value, int]:
        value, pos = self.value()
        if value is None:
            raise self.error(pos, "null cannot be a bound of BETWEEN", [_NULL_HINT])
        self.check_orderable("BETWEEN", value, pos)
        return value, pos
