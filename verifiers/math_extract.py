"""Answer extraction and string normalisation for the math verifier (pure string code).

Nothing here imports sympy or evaluates anything, so it is safe to run in the caller's
process. :func:`extract_answer` fails closed: it returns ``None`` rather than guessing a
number from the text. :func:`normalize` rewrites an answer into a canonical string that the
parser in :mod:`mpo_gym.verifiers.math_parse` reads, and that the verifier compares directly
as a cheap first path.
"""

from __future__ import annotations

import re

DEGREE = "°"
PERCENT = "%"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_HASH_RE = re.compile(r"^[ \t]*####[ \t]*(.+)$", re.M)
_FINAL_RE = re.compile(
    r"(?:final[ \t]+answer|the[ \t]+answer)[ \t]*(?:is|:)[ \t]*:?[ \t]*(.+)$", re.I | re.M
)
_ANSWER_LINE_RE = re.compile(r"^[ \t*#>_]*answer[ \t*_]*[:：][ \t*_]*(.+)$", re.I | re.M)
_PROSE_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}[\s,.;:'’]+[a-zA-Z]{1,}(?![a-zA-Z]*\})")


def last_boxed(text: str) -> tuple[str | None, bool]:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` (nested braces allowed).

    Returns:
        ``(content, found)``: ``found`` is True when a box command occurs at all; the content
        is ``None`` when the last box is never closed (a truncated response).
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None, False
    i = matches[-1].end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":  # "\boxed 5"
        token = re.match(r"[^\s$]+", text[i:])
        return (token.group(0) if token else None), True
    return _braced(text, i), True


def _joined_boxes(text: str, items: int) -> str | None:
    """The last ``items`` boxes joined by commas, if they sit on one line, else ``None``."""
    every = list(_BOX_RE.finditer(text))
    if items > 20 or len(every) < items:
        return None
    matches = every[-items:]
    if len(every) > items:  # the group must be all the boxes on that line
        before = every[-items - 1]
        if "\n" not in text[before.end() : matches[0].start()]:
            return None
    contents, end = [], None
    for m in matches:
        if end is not None and (m.start() - end > 40 or "\n" in text[end : m.start()]):
            return None
        if m.end() >= len(text) or text[m.end()] != "{":
            return None
        inner = _braced(text, m.end())
        if inner is None or not inner.strip():
            return None
        contents.append(inner.strip())
        end = m.end() + len(inner) + 2
    return ", ".join(contents)


def count_items(reference: str) -> int:
    r"""How many answers a (normalised) reference lists: top-level commas, or ``\pm``."""
    depth, commas = 0, 0
    for ch in reference:
        depth += (ch in "([{") - (ch in ")]}")
        commas += ch == "," and depth == 0
    return commas + 1 if commas else (2 if "\\pm" in reference else 1)


def _braced(text: str, i: int) -> str | None:
    """The content of the brace group opening at ``text[i] == '{'``, or ``None``."""
    depth = 0
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif ch == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def _clean_line_answer(ans: str) -> str:
    """Trim an answer taken from a sentence: math delimiters, trailing prose and dots."""
    ans = ans.strip()
    dollar = re.match(r"^\$+(.+?)\$+", ans)
    if dollar:
        return dollar.group(1).strip()
    ans = re.split(r"\.[ \t]+(?=[A-Z])|(?<!\s)\s+(?:I hope|because|since|which)\b", ans)[0]
    return ans.strip().rstrip(".").strip()


def is_bare_answer(text: str) -> bool:
    """True when ``text`` looks like only an answer (no sentences around it)."""
    stripped = text.strip().strip("$").strip()
    if not stripped:
        return False
    without_text = re.sub(r"\\(?:text|mbox|mathrm|textbf)\{[^{}]*\}", " ", stripped)
    if "\n" in without_text.strip() and not re.search(r"\\begin\{", without_text):
        return False
    return _PROSE_RE.search(without_text) is None


def extract_answer(response: str, boxed_only: bool = False, items: int = 1) -> str | None:
    r"""The answer a response commits to, or ``None`` (fail closed).

    Order: the last ``\boxed{}``/``\fbox{}`` (an unclosed last box means ``None``); then the
    last "final answer is X" / "the answer is X" / "Answer: X" / "#### X" line; then the whole
    response if it is only an answer. With ``boxed_only`` only the first rule applies.

    ``items`` is how many answers the reference lists (``2, 3`` has two). When it is above
    one and the last ``items`` boxes sit on one line with only short glue between them
    (``x = \boxed{2} or x = \boxed{3}``), their contents are joined with commas.
    """
    boxed, found = last_boxed(response)
    if found and items > 1 and boxed is not None:
        boxed = _joined_boxes(response, items) or boxed
    if found or boxed_only:
        return boxed.strip() if boxed and boxed.strip() else None
    best: tuple[int, str] | None = None
    for pattern in (_HASH_RE, _FINAL_RE, _ANSWER_LINE_RE):
        for m in pattern.finditer(response):
            if best is None or m.start() > best[0]:
                best = (m.start(), m.group(1))
    if best is not None:
        ans = _clean_line_answer(best[1].strip())
        return ans or None
    if is_bare_answer(response):
        return response.strip()
    return None


def extract_reference(reference: object) -> str:
    r"""The gold answer as a string: the last ``\boxed{}`` if it has one, else all of it."""
    text = str(reference)
    boxed, _ = last_boxed(text)
    return (boxed if boxed is not None else text).strip()


# -- normalisation ---------------------------------------------------------------------------
_REPLACEMENTS = [
    (r"\\[dt]frac", r"\\frac"),
    (r"\\displaystyle|\\limits", ""),
    (r"\\(?:big|Big|bigg|Bigg)[lr]?(?![a-zA-Z])", ""),
    (r"\\left\s*\.|\\right\s*\.", ""),
    (r"\\(?:left|right)(?![a-zA-Z])", ""),
    (r"(?<!\\)\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~", " "),
    (r"\\(?:leqslant|leq|le)(?![a-zA-Z])|≤|<=", r"\\leq "),
    (r"\\(?:geqslant|geq|ge)(?![a-zA-Z])|≥|>=", r"\\geq "),
    (r"\\(?:neq|ne)(?![a-zA-Z])|≠|!=", r"\\neq "),
    (r"\\lt(?![a-zA-Z])", "<"),
    (r"\\gt(?![a-zA-Z])", ">"),
    (r"\\in(?![a-zA-Z])|∈", "="),
    (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])", DEGREE),
    (r"\\?%", PERCENT),
    (r"\\\$|\$", ""),
    (r"\{,\}", ","),
    (r"\\langle(?![a-zA-Z])|⟨", "("),
    (r"\\rangle(?![a-zA-Z])|⟩", ")"),
    (r"∞", r"\\infty "),
    (r"π", r"\\pi "),
    (r"−|–", "-"),
    (r"×", r"\\times "),
    (r"·", r"\\cdot "),
    (r"\\(?:mathbf|mathit|mathrm|textrm|textbf|textit|text|mbox|operatorname)\s*\{\s*(or|and)\s*\}", ","),
    (r"\s+(?:or|and)\s+", ","),
    (r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}"),
    (r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}"),
    (r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{"),
    (r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}"),
]
_COMPILED = [(re.compile(p), r) for p, r in _REPLACEMENTS]
_TEXT_CMD = r"\\(?:mathbf|mathit|mathrm|textrm|textbf|textit|text|mbox|operatorname)\s*"
_TRAILING_UNIT_RE = re.compile(_TEXT_CMD + r"\{[^{}]*\}\s*(?:\^\s*\{?\d\}?)?\s*$")
_PLAIN_UNIT_RE = re.compile(
    r"^([-+]?[\d.,/]*\d) ?([a-zA-Z]{2,}\.?(?: [a-zA-Z]+\.?)*)(?:\^\{?\d\}?)?$"
)
_THOUSANDS_RE = re.compile(r"(?<![\d.,])[1-9]\d{0,2}(?:,\d{3})+(?![\d,])")


def _strip_units(s: str) -> str:
    """Drop trailing ``\\text{...}`` units and plain unit words after a number."""
    for _ in range(3):
        m = _TRAILING_UNIT_RE.search(s)
        if not m or not s[: m.start()].strip():
            break
        s = s[: m.start()].strip()
    s = re.sub(_TEXT_CMD + r"\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\s+", " ", s.strip())
    m = _PLAIN_UNIT_RE.match(s) if re.search(r"[a-zA-Z]{2}", s[-40:]) else None
    return m.group(1) if m else s


def _remove_thousands(s: str) -> str:
    """``1,000,000`` -> ``1000000``, only outside brackets (so ``[1,100]`` stays)."""
    depth, pos, out, last = 0, 0, [], 0
    for m in _THOUSANDS_RE.finditer(s):
        depth += sum(1 if c in "([{" else -1 if c in ")]}" else 0 for c in s[pos : m.start()])
        pos = m.start()
        if depth == 0:
            out.append(s[last : m.start()] + m.group(0).replace(",", ""))
            last = m.end()
    out.append(s[last:])
    return "".join(out)


def _squash_spaces(s: str) -> str:
    """Remove spaces, except where they separate a command from a following letter."""
    s = re.sub(r"\s+", " ", s.strip())
    s = re.sub(r"(\\[a-zA-Z]+) (?=[a-zA-Z])", "\\1\x00", s)
    return s.replace(" ", "").replace("\x00", " ")


def normalize(answer: str) -> str:
    """Canonical string form of an extracted answer (see the module docstring of ``math``)."""
    s = answer.strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    for pattern, repl in _COMPILED:
        s = pattern.sub(repl, s)
    s = _strip_units(s)
    s = _remove_thousands(s.strip())
    s = _squash_spaces(s)
    s = s.rstrip(".").rstrip("\\")
    while s.startswith("{") and _braced(s, 0) == s[1:-1]:
        s = s[1:-1]
    return s
