"""A recursive-descent parser for the PromQL subset the /prom surface answers: vector
selectors with `=`, `!=`, `=~`, `!~` matchers, `sum [by (...)] (...)`, `topk(n, ...)`,
parentheses, and arithmetic on number literals only (what Grafana's "Save & test" sends,
`1+1`). Anything else is a ValueError naming what is unsupported (the API's bad_data).

Grammar (tokens: identifiers, strings, numbers, punctuation):

    expr      := term (('+'|'-'|'*'|'/') term)*           # only between number literals
    term      := NUMBER | '(' expr ')' | aggregate | selector
    aggregate := 'sum' [by] '(' expr ')' [by] | 'topk' '(' NUMBER ',' expr ')'
    by        := 'by' '(' [label (',' label)* [',']] ')'
    selector  := metric ['{' matchers '}'] | '{' matchers '}'
    matchers  := [matcher (',' matcher)* [',']]
    matcher   := label ('='|'!='|'=~'|'!~') STRING
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

OPS: Final = ("=", "!=", "=~", "!~")
AGGREGATIONS: Final = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}
_BINARY: Final = {"+", "-", "*", "/", "%", "^", "==", "!=", "<", ">", "<=", ">="}
MAX_DEPTH = 32
"""Deepest nesting a query may have (refused past it, never a RecursionError)."""
MAX_QUERY_CHARS = 10_000
MAX_REGEX_CHARS = 256
_NESTED = re.compile(r"\([^)]*[*+}][^)]*\)\s*[*+{]")
"""A quantified group holding a quantifier: Python's backtracking could take exponential
time on it (Prometheus' RE2 would not), so such a regex is refused."""

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf|[Nn]a[Nn])
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<op>=~|!~|!=|==|<=|>=|[{}()\[\],=+\-*/%^<>@])
    """,
    re.VERBOSE,
)


class Matcher(msgspec.Struct, frozen=True):
    """One label matcher; regexes are fully anchored, as Prometheus' are."""

    label: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        """Whether a label's value (\"\" when absent) passes this matcher."""
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


class Selector(msgspec.Struct, frozen=True):
    """`metric{matchers}`: the metric name, when given, is a `__name__=` matcher."""

    matchers: tuple[Matcher, ...]


class Sum(msgspec.Struct, frozen=True):
    """`sum by (labels) (expr)`; by None: everything summed into one series."""

    by: tuple[str, ...] | None
    expr: Expr


class TopK(msgspec.Struct, frozen=True):
    """`topk(k, expr)`: the k series of expr with the highest values."""

    k: int
    expr: Expr


class Number(msgspec.Struct, frozen=True):
    """A scalar (a literal, or arithmetic on literals)."""

    value: float


Expr = Selector | Sum | TopK | Number


class _Tok(msgspec.Struct, frozen=True):
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos]!r} at position {pos}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    out.append(_Tok("eof", "", len(text)))
    return out


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a"}


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise ValueError(f"unsupported escape \\{nxt} in string {text}")
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, text: str) -> None:
        t = self.take()
        if t.text != text or t.kind == "str":
            found = "the end of the query" if t.kind == "eof" else repr(t.text)
            raise ValueError(f"expected {text!r} at position {t.pos}, found {found}")

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ValueError(f"query nested deeper than {MAX_DEPTH}")
        left = self.term()
        while (self.tok.kind == "op" and self.tok.text in _BINARY) or (
            self.tok.kind == "ident" and self.tok.text in ("and", "or", "unless")
        ):
            op = self.take()
            right = self.term()
            if not (isinstance(left, Number) and isinstance(right, Number) and op.text in "+-*/"):
                raise ValueError(
                    f"unsupported: binary operator {op.text!r} (only arithmetic between"
                    " number literals; supported: selectors, sum by, topk)"
                )
            left = Number(_arith(left.value, op.text, right.value))
        self.depth -= 1
        return left

    def term(self) -> Expr:
        t = self.tok
        if t.kind == "num":
            self.take()
            return Number(float(t.text) if not t.text.lower().startswith("0x") else int(t.text, 16))
        if t.kind == "op" and t.text == "-" and self.toks[self.i + 1].kind == "num":
            self.take()
            return Number(-float(self.take().text))
        if t.text == "(" and t.kind == "op":
            self.take()
            inner = self.expr()
            self.expect(")")
            return self._postfix(inner)
        if t.kind == "op" and t.text == "{":
            return self._postfix(self.selector(None))
        if t.kind == "ident":
            self.take()
            if t.text in AGGREGATIONS:
                return self.aggregate(t)
            if self.tok.text == "(" and self.tok.kind == "op":
                raise ValueError(f"unsupported: function {t.text}() (supported: sum, topk)")
            if t.text in ("by", "without", "offset", "bool", "on", "ignoring"):
                raise ValueError(f"unsupported: {t.text!r} at position {t.pos}")
            return self._postfix(self.selector(t.text))
        if t.kind == "str":
            raise ValueError(f"unsupported: string literal at position {t.pos}")
        found = "the end of the query" if t.kind == "eof" else repr(t.text)
        raise ValueError(f"unexpected {found} at position {t.pos}")

    def _postfix(self, e: Expr) -> Expr:
        t = self.tok
        if t.kind == "op" and t.text == "[":
            raise ValueError(
                f"unsupported: range vector selector at position {t.pos}"
                " (the step is the bucket: ask counters_count, not rate or increase)"
            )
        if t.kind == "op" and t.text == "@":
            raise ValueError(f"unsupported: @ modifier at position {t.pos}")
        if t.kind == "ident" and t.text == "offset":
            raise ValueError(f"unsupported: offset modifier at position {t.pos}")
        return e

    def by(self) -> tuple[str, ...]:
        self.expect("(")
        labels: list[str] = []
        while not (self.tok.kind == "op" and self.tok.text == ")"):
            t = self.take()
            if t.kind != "ident":
                raise ValueError(f"expected a label name in by (...) at position {t.pos}")
            labels.append(t.text)
            if self.tok.text == ",":
                self.take()
            elif self.tok.text != ")":
                raise ValueError(f"expected ',' or ')' in by (...) at position {self.tok.pos}")
        self.take()
        return tuple(dict.fromkeys(labels))

    def aggregate(self, name: _Tok) -> Expr:
        if name.text == "topk":
            self.expect("(")
            k_tok = self.take()
            if k_tok.kind != "num":
                raise ValueError(f"topk: expected a number at position {k_tok.pos}")
            k = float(k_tok.text)
            if k != int(k) or not 1 <= k <= 1_000:
                raise ValueError("topk: k must be a whole number 1..1000")
            self.expect(",")
            inner = self.expr()
            self.expect(")")
            if self.tok.kind == "ident" and self.tok.text in ("by", "without"):
                raise ValueError(f"unsupported: topk ... {self.tok.text} (...)")
            return TopK(int(k), inner)
        if name.text != "sum":
            raise ValueError(f"unsupported: aggregation {name.text} (supported: sum, topk)")
        by: tuple[str, ...] | None = None
        if self.tok.kind == "ident" and self.tok.text == "without":
            raise ValueError("unsupported: sum without (...) (use sum by (...))")
        if self.tok.kind == "ident" and self.tok.text == "by":
            self.take()
            by = self.by()
        self.expect("(")
        inner = self.expr()
        self.expect(")")
        if self.tok.kind == "ident" and self.tok.text == "without":
            raise ValueError("unsupported: sum without (...) (use sum by (...))")
        if self.tok.kind == "ident" and self.tok.text == "by":
            if by is not None:
                raise ValueError("by (...) given twice")
            self.take()
            by = self.by()
        return Sum(by, inner)

    def selector(self, metric: str | None) -> Selector:
        matchers: list[Matcher] = []
        if metric is not None:
            matchers.append(Matcher("__name__", "=", metric))
        if self.tok.kind == "op" and self.tok.text == "{":
            self.take()
            while not (self.tok.kind == "op" and self.tok.text == "}"):
                label = self.take()
                if label.kind != "ident":
                    raise ValueError(f"expected a label name at position {label.pos}")
                op = self.take()
                if op.text not in OPS or op.kind != "op":
                    raise ValueError(
                        f"expected one of {', '.join(OPS)} after {label.text} at position {op.pos}"
                    )
                value = self.take()
                if value.kind != "str":
                    raise ValueError(f"expected a quoted string at position {value.pos}")
                text = _unquote(value.text)
                if op.text in ("=~", "!~"):
                    if len(text) > MAX_REGEX_CHARS or _NESTED.search(text):
                        raise ValueError(
                            f"unsupported regex for {label.text}: at most {MAX_REGEX_CHARS}"
                            " characters and no nested quantifiers like (a+)+"
                        )
                    try:
                        re.compile(text)
                    except re.error as exc:
                        raise ValueError(f"bad regex {text!r} for {label.text}: {exc}") from exc
                matchers.append(Matcher(label.text, op.text, text))
                if self.tok.kind == "op" and self.tok.text == ",":
                    self.take()
                elif not (self.tok.kind == "op" and self.tok.text == "}"):
                    raise ValueError(f"expected ',' or '}}' at position {self.tok.pos}")
            self.take()
        if not matchers:
            raise ValueError("a selector needs a metric name or at least one matcher")
        return Selector(tuple(matchers))


def _arith(a: float, op: str, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return float("nan") if a == 0 else float("inf") * (1 if a > 0 else -1)
    return a / b


def parse_promql(text: str) -> Expr:
    """The query's syntax tree; ValueError naming the first unsupported or malformed part."""
    if not text.strip():
        raise ValueError("query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"query longer than {MAX_QUERY_CHARS} characters")
    p = _Parser(text)
    e = p.expr()
    if p.tok.kind != "eof":
        raise ValueError(f"unexpected {p.tok.text!r} at position {p.tok.pos}")
    return e
