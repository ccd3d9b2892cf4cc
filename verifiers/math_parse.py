"""Parse a normalised answer string into a small tree of typed nodes (worker side).

Structure (lists, sets, tuples, intervals, unions, relations, matrices, ``\\pm``) is read
here with a bracket-aware splitter; scalar expressions go to ``latex2sympy2_extended`` when
they contain LaTeX, and to :func:`parse_plain` (a whitelisted recursive-descent parser that
builds sympy objects directly) when they are plain text. Nothing is ever passed to
``eval``, ``sympify`` or ``parse_expr``. Run this only inside a worker process: sympy can
take unbounded time on hostile input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sympy

from .math_extract import DEGREE, PERCENT

MAX_DEPTH = 200
MAX_PM = 3


class ParseFailure(ValueError):
    """The answer could not be read as mathematics."""


@dataclass(frozen=True)
class Expr:
    """A scalar: sympy value plus the markers stripped from it."""

    value: Any
    percent: bool = False
    degree: bool = False
    ulp: float = 0.0  # half a unit in the last place when written as a plain decimal


@dataclass(frozen=True)
class Text:
    """A word answer (``Monday``), compared case-insensitively."""

    text: str


@dataclass(frozen=True)
class Group:
    """A bracketed or bare collection.

    ``kind`` is ``"seq"`` (tuple/interval; ``open``/``close`` are the brackets),
    ``"set"`` (``\\{...\\}``), ``"bag"`` (bare list of answers), ``"union"`` (``\\cup``), or
    ``"ratio"`` (``a:b``, also clock times ``12:00``; compared term by term, never divided).
    """

    kind: str
    items: tuple[Any, ...]
    open: str = ""
    close: str = ""


@dataclass(frozen=True)
class Rel:
    """A chain ``a op b op c``; ``ops`` use ``= < <= !=`` only (``>`` chains are reversed)."""

    ops: tuple[str, ...]
    parts: tuple[Any, ...]


@dataclass(frozen=True)
class Matrix:
    rows: tuple[tuple[Any, ...], ...] = field(default_factory=tuple)


# -- bracket-aware splitting -----------------------------------------------------------------
def _depths(s: str) -> list[int]:
    """Bracket depth before each character; any of ``([{`` opens and ``)]}`` closes."""
    out, depth = [], 0
    for ch in s:
        out.append(depth)
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    return out


def split_top(s: str, sep_re: str) -> tuple[list[str], list[str]]:
    """Split ``s`` on matches of ``sep_re`` at bracket depth 0; return (parts, separators)."""
    depths = _depths(s)
    parts, seps, last = [], [], 0
    for m in re.finditer(sep_re, s):
        if depths[m.start()] == 0 and m.start() >= last:
            parts.append(s[last : m.start()])
            seps.append(m.group(0))
            last = m.end()
    parts.append(s[last:])
    return parts, seps


def _outer_pair(s: str) -> tuple[str, str, str] | None:
    """``(open, inner, close)`` when one bracket pair encloses all of ``s``."""
    for op, cl in (("\\{", "\\}"),):
        if s.startswith(op) and s.endswith(cl) and _closes_at_end(s):
            return op, s[len(op) : -len(cl)], cl
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _closes_at_end(s):
        return s[0], s[1:-1], s[-1]
    return None


def _closes_at_end(s: str) -> bool:
    if s.startswith("\\{"):
        s = s[1:]
    depths = _depths(s)
    return all(d > 0 for d in depths[1:]) and depths[-1] == 1


# -- the node parser -------------------------------------------------------------------------
_REL_RE = r"\\leq|\\geq|\\neq|=|<|>"
_RATIO_RE = r"(?<!\\):(?!=)"
_REL_MAP = {"\\leq": "<=", "\\geq": ">=", "\\neq": "!=", "=": "=", "<": "<", ">": ">"}
_MATRIX_RE = re.compile(r"^\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.S)


def parse_node(s: str, depth: int = 0) -> Any:
    """Parse a normalised answer into ``Expr | Text | Group | Rel | Matrix``.

    Raises:
        ParseFailure: when no reading of ``s`` is possible.
    """
    if depth > MAX_DEPTH:
        raise ParseFailure("nested too deeply")
    s = s.strip()
    if not s:
        raise ParseFailure("empty answer")
    parts, _ = split_top(s, r",")
    if len(parts) > 1:
        return Group("bag", tuple(parse_node(p, depth + 1) for p in parts))
    parts, seps = split_top(s, _REL_RE)
    if len(parts) > 1:  # before unions: x = [-2, -1] \cup [1, 2]
        return _relation(parts, [_REL_MAP[x] for x in seps], depth)
    parts, _ = split_top(s, r"\\cup|∪")
    if len(parts) > 1:
        return Group("union", tuple(parse_node(p, depth + 1) for p in parts))
    parts, _ = split_top(s, _RATIO_RE)
    if len(parts) > 1:  # 11:21, 12:00: never read as a quotient (12:00 is not 12/0)
        return Group("ratio", tuple(parse_node(p, depth + 1) for p in parts))
    if "\\pm" in s or "\\mp" in s:
        return _plus_minus(s, depth)
    return _bracketed_or_scalar(s, depth)


_SEGMENT_RE = re.compile(r"[A-Z]{2,4}")
_CALL_RE = re.compile(r"[A-Za-z]\((?:[A-Za-z]|\d+)\)")
_NAME_RE = re.compile(r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?(?:\([^()]*\))?")


def _relation(parts: list[str], ops: list[str], depth: int) -> Rel:
    """A relation chain; a left side like ``k``, ``x_1`` or ``f(3)`` is kept as a name."""
    nodes = [parse_node(p, depth + 1) for p in parts]
    if _NAME_RE.fullmatch(parts[0].strip()) and "(" in parts[0]:
        nodes[0] = Expr(sympy.Symbol(parts[0].strip()))
    if _SEGMENT_RE.fullmatch(parts[0].strip()):  # AB = 4: a segment's name, not the word "ab"
        nodes[0] = Expr(sympy.Symbol(parts[0].strip()))
    for k in range(1, len(parts) - 1):  # 0 < f(x) < 1: the function value is the variable
        if _CALL_RE.fullmatch(parts[k].strip()):
            nodes[k] = Expr(sympy.Symbol(parts[k].strip()))
    if any(op in (">", ">=") for op in ops):
        if not all(op in (">", ">=") for op in ops):
            raise ParseFailure("mixed inequality directions")
        nodes.reverse()
        ops = [op.replace(">", "<") for op in reversed(ops)]
    return Rel(tuple(ops), tuple(nodes))


def _plus_minus(s: str, depth: int) -> Any:
    if s.count("\\pm") + s.count("\\mp") > MAX_PM:
        raise ParseFailure("too many \\pm")
    m = re.search(r"\\pm|\\mp", s)
    assert m is not None
    first, second = ("+", "-") if m.group(0) == "\\pm" else ("-", "+")
    a = parse_node(s[: m.start()] + first + s[m.end() :], depth + 1)
    b = parse_node(s[: m.start()] + second + s[m.end() :], depth + 1)
    items: list[Any] = []
    for node in (a, b):
        items.extend(node.items if isinstance(node, Group) and node.kind == "bag" else [node])
    return Group("bag", tuple(items))


_ENV_RE = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*?)\\end\{\1\}", re.S)
MAX_MATRIX_TERMS = 6
MAX_MATRIX_CELLS = 100


def _matrix_expression(s: str, depth: int) -> Matrix:
    """Sums, differences and products of matrix literals (``A + B``, ``A B``, ``A \\cdot B``),
    evaluated exactly with sympy; anything else between the literals is a parse failure."""
    literals = list(_ENV_RE.finditer(s))
    if len(literals) > MAX_MATRIX_TERMS or s[: literals[0].start()].strip() or s[
        literals[-1].end() :
    ].strip():
        raise ParseFailure("not a matrix expression")
    value = None
    op = ""
    for k, m in enumerate(literals):
        if k:
            op = s[literals[k - 1].end() : m.start()].strip()
            if op not in ("+", "-", "", "\\cdot", "\\times"):
                raise ParseFailure(f"operator {op[:20]!r} between matrices")
        mat = _sympy_matrix(_matrix_literal(m.group(2), depth))
        try:
            if value is None:
                value = mat
            elif op in ("+", "-"):
                value = value + mat if op == "+" else value - mat
            else:
                value = value * mat
        except (sympy.ShapeError, ValueError, TypeError) as exc:
            raise ParseFailure(f"matrix shapes: {exc}") from None
    assert value is not None
    if value.rows * value.cols > MAX_MATRIX_CELLS:
        raise ParseFailure("matrix too large")
    return Matrix(tuple(tuple(Expr(value[i, j]) for j in range(value.cols))
                        for i in range(value.rows)))


def _matrix_literal(body: str, depth: int) -> Matrix:
    rows = [r for r in re.split(r"\\\\", body) if r.strip()]
    cells = tuple(tuple(parse_node(c, depth + 1) for c in r.split("&")) for r in rows)
    if not cells or len({len(r) for r in cells}) != 1:
        raise ParseFailure("ragged matrix")
    if len(cells) * len(cells[0]) > MAX_MATRIX_CELLS:
        raise ParseFailure("matrix too large")
    return Matrix(cells)


def _sympy_matrix(m: Matrix) -> Any:
    if not all(isinstance(c, Expr) and not c.percent and not c.degree for r in m.rows for c in r):
        raise ParseFailure("matrix cells must be numbers or expressions")
    return sympy.Matrix([[c.value for c in r] for r in m.rows])


def _bracketed_or_scalar(s: str, depth: int) -> Any:
    if s.count("\\begin{") > 1:
        return _matrix_expression(s, depth)
    matrix = _MATRIX_RE.match(s)
    if matrix:
        return _matrix_literal(matrix.group(2), depth)
    pair = _outer_pair(s)
    if pair is not None:
        op, inner, cl = pair
        items = tuple(parse_node(p, depth + 1) for p in split_top(inner, r",")[0])
        if op == "\\{":
            return Group("set", items)
        if len(items) == 1 and (op, cl) in (("(", ")"), ("[", "]")):
            return items[0]
        return Group("seq", items, op, cl)
    return parse_scalar(s)


def parse_scalar(s: str) -> Expr | Text:
    """A single expression, with ``%`` and ``°`` markers turned into flags."""
    percent = s.endswith(PERCENT)
    degree = DEGREE in s
    s = s.replace(DEGREE, "").rstrip(PERCENT).strip()
    if not s:
        raise ParseFailure("empty expression")
    if re.fullmatch(r"[A-Za-z][A-Za-z ]+", s) and s.lower() not in ("pi", "oo", "inf"):
        return Text(s.replace(" ", "").lower())
    based = re.fullmatch(r"(\d[0-9A-Fa-f]*)_\{?\(?(\d+)\)?\}?", s)
    if based:  # a numeral in another base (40_9): compared digit by digit, never as 40
        return Text(f"{based.group(1).upper()}_{based.group(2)}")
    scientific = _SCIENTIFIC_RE.fullmatch(s)
    if scientific:  # 2e6 is exactly 2000000; 2.5e6 shows two digits (half of 1e5 either way)
        mantissa, digits, exponent = scientific.group(1), scientific.group(2), int(scientific.group(3))
        if abs(exponent) > 300:
            raise ParseFailure("exponent too large")
        if digits is None:
            return Expr(sympy.Integer(mantissa) * sympy.Rational(10) ** exponent, percent, degree)
        return Expr(_to_sympy(s), percent, degree, 0.5 * 10.0 ** (exponent - len(digits)))
    decimal = re.fullmatch(r"[-+]?\d*\.(\d+)", s)
    return Expr(_to_sympy(s), percent, degree, 0.5 * 10.0 ** -len(decimal.group(1)) if decimal else 0.0)


# 2e6, 2.5E-3, 2.5 \times 10^{6}, 2.5\cdot10^6: the mantissa, its decimals, the exponent
_SCIENTIFIC_RE = re.compile(
    r"([-+]?\d+)(?:\.(\d+))?(?:[eE]|\s*(?:\\times|\\cdot|\*)\s*10\s*\^)\s*(?:\{\s*)?([-+]?\d{1,3})\s*\}?"
)


@lru_cache(maxsize=8192)
def _to_sympy(s: str) -> Any:
    if not re.search(r"[\\{}]", s):
        try:
            return parse_plain(s)
        except ParseFailure:
            pass
    return _latex(s)


def _latex(s: str) -> Any:
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    try:
        value = latex2sympy(
            s,
            normalization_config=NormalizationConfig(
                basic_latex=True, units=False, malformed_operators=False, nits=False,
                boxed="none", equations=False,
            ),
            conversion_config=ConversionConfig(lowercase_symbols=False),
        )
    except Exception as exc:  # the LaTeX parser rejects it: not our bug
        raise ParseFailure(f"LaTeX: {type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(value, sympy.Basic | sympy.MatrixBase):
        raise ParseFailure(f"LaTeX parser returned {type(value).__name__}")
    return value


# -- plain text -------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|[A-Za-z]+|\*\*|[-+*/^()!])")
_FUNCS: dict[str, Any] = {
    "sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
    "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc, "arcsin": sympy.asin,
    "arccos": sympy.acos, "arctan": sympy.atan, "asin": sympy.asin, "acos": sympy.acos,
    "atan": sympy.atan, "log": sympy.log, "ln": sympy.log, "exp": sympy.exp,
    "abs": sympy.Abs, "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
}
_CONSTS: dict[str, Any] = {
    "pi": sympy.pi, "e": sympy.E, "oo": sympy.oo, "inf": sympy.oo, "infinity": sympy.oo,
}


def _tokenize(s: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m:
            if s[pos:].strip() == "":
                break
            raise ParseFailure(f"unexpected character {s[pos]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_plain(s: str) -> Any:
    """Parse plain-text math (``1/2``, ``2*sqrt(3)``, ``x^2``, ``3e5``) without ``eval``.

    Grammar: sums of products of signed powers of atoms; implicit multiplication between
    adjacent atoms; ``^`` and ``**`` are right-associative; ``!`` is factorial. Names are
    whitelisted functions or constants; any other word is split into one-letter symbols.
    Integer powers are built unevaluated, so ``9^9^9^9`` costs nothing here.
    """
    parser = _PlainParser(_tokenize(s))
    value = parser.sum(0)
    if parser.pos != len(parser.tokens):
        raise ParseFailure(f"unexpected {parser.tokens[parser.pos]!r}")
    return value


class _PlainParser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ParseFailure("unexpected end of expression")
        self.pos += 1
        return tok

    def sum(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ParseFailure("nested too deeply")
        value = self.product(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.product(depth)
            value = sympy.Add(value, rhs if op == "+" else -rhs)
        return value

    def product(self, depth: int) -> Any:
        value = self.unary(depth)
        while True:
            tok = self.peek()
            if tok in ("*", "/"):
                self.take()
                rhs = self.unary(depth)
                value = sympy.Mul(value, rhs) if tok == "*" else sympy.Mul(value, sympy.Pow(rhs, -1))
            elif tok is not None and (tok == "(" or tok[0].isalnum() or tok[0] == "."):
                value = sympy.Mul(value, self.power(depth))
            else:
                return value

    def unary(self, depth: int) -> Any:
        if self.peek() in ("+", "-"):
            sign = self.take()
            value = self.unary(depth + 1)
            return -value if sign == "-" else value
        return self.power(depth)

    def power(self, depth: int) -> Any:
        base = self.postfix(depth)
        if self.peek() in ("^", "**"):
            self.take()
            return sympy.Pow(base, self.unary(depth + 1), evaluate=False)
        return base

    def postfix(self, depth: int) -> Any:
        value = self.atom(depth)
        while self.peek() == "!":
            self.take()
            value = sympy.factorial(value, evaluate=False)
        return value

    def atom(self, depth: int) -> Any:
        tok = self.take()
        if tok == "(":
            value = self.sum(depth + 1)
            if self.take() != ")":
                raise ParseFailure("unbalanced parentheses")
            return value
        if tok[0].isdigit() or tok[0] == ".":
            return _number(tok)
        if tok.isalpha():
            return self.name(tok, depth)
        raise ParseFailure(f"unexpected {tok!r}")

    def name(self, tok: str, depth: int) -> Any:
        low = tok.lower()
        if low in _FUNCS and self.peek() == "(":
            return _FUNCS[low](self.atom(depth + 1))
        if low in _CONSTS and (low != "e" or tok == "e"):
            return _CONSTS[low]
        if len(tok) > 3:
            raise ParseFailure(f"unknown word {tok!r}")
        return sympy.Mul(*[sympy.Symbol(ch) for ch in tok])


def _number(tok: str) -> Any:
    if re.fullmatch(r"\d+", tok):
        if len(tok) > 4000:
            raise ParseFailure("number too long")
        return sympy.Integer(tok)
    if len(tok) > 400:
        raise ParseFailure("number too long")
    return sympy.Float(tok, max(15, len(tok)))
