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
    r"(?:final[ \t]+answer|\banswer)[ \t*_]*(?:is|:)[ \t*_]*:?[ \t*_]*(.+)$"
    r"|(?:r[ée]ponse(?:[ \t]+finale)?[ \t]+est|la[ \t]+respuesta(?:[ \t]+final)?[ \t]+es"
    r"|die[ \t]+(?:endg[üu]ltige[ \t]+)?antwort[ \t]+ist|答案[是为])[ \t]*:?[ \t]*(.+)$",
    re.I | re.M,
)
_ANSWER_WORD = r"(?:final[ \t]+)?(?:answer|r[ée]ponse|respuesta|antwort|resposta|ответ|答案)"
_ANSWER_LINE_RE = re.compile(
    r"^[ \t*#>_]*" + _ANSWER_WORD + r"[ \t*_]*(?:[:：]|(?=\$|\\\[|\\\())[ \t*_]*(.+)$", re.I | re.M
)
_PROSE_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}[\s,.;:'’]+[a-zA-Z]{1,}(?![a-zA-Z]*\})")
_END_TOKEN_RE = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|end)\|>")
_CONCLUSION_RE = re.compile(
    r"^\W*(?:therefore|thus|hence|so|finally|in conclusion|we (?:find|get|obtain|conclude|have)"
    r"|the (?:solution|answer|result))\b",
    re.I,
)
_LEAD_END_RE = re.compile(
    r"(?:\b(?:is|are|was|equals|that|get|obtain|gives?)|[:=])[ \t]*$", re.I
)
# What may follow the last math span for it to be the answer ("$5$ is the answer."), matched on
# the tail with its runs of spaces and tabs squashed to one space and the ends stripped, so that
# no two quantifiers can share a run of blanks (three adjacent [ \t]* backtracked cubically).
_AFTER_SPAN_RE = re.compile(
    r"(?:(?:is|are) (?:(?:the|our|a) ?)?(?:final )?(?:solution|answer|result)s?)? ?[.!]?",
    re.I,
)
_BLANKS_RE = re.compile(r"[ \t]+")


def _answer_tail(text: str) -> bool:
    """Whether ``text`` (what follows the last math span) lets that span be the answer."""
    if text.endswith("\n"):
        text = text[:-1]
    if "\n" in text:
        return False
    return _AFTER_SPAN_RE.fullmatch(_BLANKS_RE.sub(" ", text).strip(" ")) is not None


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
    """The last ``items`` boxes joined by commas, if they form the whole trailing run of
    boxes with short glue on one line, else ``None``."""
    every = list(_BOX_RE.finditer(text))
    if items > 20 or len(every) < items:
        return None
    matches = every[-items:]
    if len(every) > items:  # the run must not go on to the left: then it has more items
        before = every[-items - 1]
        end = _box_end(text, before)
        if end is not None and _short_glue(text[end : matches[0].start()]):
            return None
    contents, end = [], None
    for m in matches:
        if end is not None and not _short_glue(text[end : m.start()]):
            return None
        if m.end() >= len(text) or text[m.end()] != "{":
            return None
        inner = _braced(text, m.end())
        if inner is None or not inner.strip():
            return None
        contents.append(inner.strip())
        end = m.end() + len(inner) + 2
    return ", ".join(contents)


def _box_end(text: str, m: re.Match[str]) -> int | None:
    if m.end() >= len(text) or text[m.end()] != "{":
        return None
    inner = _braced(text, m.end())
    return None if inner is None else m.end() + len(inner) + 2


def _short_glue(glue: str) -> bool:
    return len(glue) <= 40 and "\n" not in glue


_GLUE_RE = re.compile(r"^[\s,;.]*(?:(?:[A-Za-z]+[ \t]+)?(?:and|et|und))?[\s,;.]*$", re.I)


def _list_glue(glue: str) -> bool:
    r"""Glue that joins a reference's boxes into one list: commas, "and" (with at most one
    word before it: ``\boxed{1} papers and \boxed{2}``), math delimiters and spacing. Not
    "or": ``\boxed{15\frac{39}{40}}, or \boxed{\frac{639}{40}}`` are two forms of one answer."""
    if not _short_glue(glue):
        return False
    glue = re.sub(r"\\(?:text|mathrm|textnormal|mbox)\s*\{([^{}]*)\}", r" \1 ", glue)
    glue = re.sub(r"\\q?quad(?![a-zA-Z])|\\[,;: !]|\$|\\[()\[\]]|~", " ", glue)
    return _GLUE_RE.match(glue) is not None


def count_items(reference: str) -> int:
    r"""How many answers a (normalised) reference lists: top-level commas, or ``\pm``."""
    depth, commas = 0, 0
    for ch in reference:
        depth += (ch in "([{") - (ch in ")]}")
        commas += ch == "," and depth == 0
    return commas + 1 if commas else (2 if "\\pm" in reference else 1)


def _braced(text: str, i: int) -> str | None:
    """The content of the brace group opening at ``text[i] == '{'``, or ``None``.

    A backslash escapes the next character (``\\}`` is a brace, ``\\\\}`` a line break then
    a closing brace)."""
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def _span_at(text: str, i: int) -> tuple[int, str] | None:
    r"""The math span opening at ``text[i]``: ``(end, content)``, or ``None``.

    Display math (``$$...$$``, ``\[...\]``) may run over lines; inline math (``$...$``,
    ``\(...\)``) must close on its own line (an unclosed ``$`` is a dollar sign).
    """
    if text.startswith("$$", i):
        j = text.find("$$", i + 2)
        return (j + 2, text[i + 2 : j]) if j != -1 else None
    if text.startswith("\\[", i) or text.startswith("\\(", i):
        close = "\\]" if text[i + 1] == "[" else "\\)"
        line_end = len(text) if close == "\\]" else _line_end(text, i)
        j = text.find(close, i + 2, line_end)
        return (j + 2, text[i + 2 : j]) if j != -1 else None
    if text.startswith("$", i):
        j = i + 1
        while j < len(text) and text[j] not in "$\n":
            j += 2 if text[j] == "\\" else 1
        return (j + 1, text[i + 1 : j]) if j < len(text) and text[j] == "$" else None
    return None


def _line_end(text: str, i: int) -> int:
    j = text.find("\n", i)
    return len(text) if j == -1 else j


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    """Every math span of ``text`` as ``(start, end, content)``, left to right.

    Linear time: once an opener finds no closer, later openers of that kind are not
    searched again where the first search already failed (the rest of the text for
    display math, the rest of the line for inline math)."""
    spans: list[tuple[int, int, str]] = []
    dead = {"$$": -1, "\\[": -1, "\\(": -1, "$": -1}  # no closer for this opener before here
    i = 0
    while i < len(text):
        ch = text[i]
        if ch not in "\\$":
            i += 1
            continue
        opener = next((o for o in ("$$", "\\[", "\\(", "$") if text.startswith(o, i)), None)
        if opener is None:
            i += 2 if ch == "\\" else 1
            continue
        span = None if dead[opener] > i else _span_at(text, i)
        if span is not None:
            spans.append((i, span[0], span[1]))
            i = span[0]
            continue
        if dead[opener] <= i:
            dead[opener] = len(text) if opener in ("$$", "\\[") else _line_end(text, i)
        i += len(opener)
    return spans


def _clean_line_answer(ans: str) -> str:
    """Trim an answer taken from a sentence: math delimiters, trailing prose and dots."""
    ans = _END_TOKEN_RE.split(ans)[0].strip()
    span = _span_at(ans, 0)
    if span is not None:
        return span[1].strip()
    ans = re.split(r"\.[ \t]+(?=[A-Z])|(?<!\s)\s+(?:I hope|because|since|which)\b", ans)[0]
    return ans.strip().rstrip(".").strip()


def _after_phrase(text: str, m: re.Match[str]) -> str:
    """The answer after an answer phrase: a later phrase on the same line wins ("Final
    Answer: The final answer is $X$"); then a math span right after it (display math may
    run over lines), else the rest of its line, trimmed; then "... is X" gives X."""
    start = _phrase_end(text, m)
    span = _span_at(text, start)
    if span is not None:
        return span[1].strip()
    return _is_tail(_clean_line_answer(text[start : _line_end(text, start)]))


def _phrase_end(text: str, m: re.Match[str]) -> int:
    start = m.start(1) if m.group(1) is not None else m.start(2)
    for _ in range(3):  # bounded: a line of repeated phrases costs linear time
        inner = _FINAL_RE.search(text, start, _line_end(text, start))
        if inner is None:
            break
        start = inner.start(1) if inner.group(1) is not None else inner.start(2)
    return start


def _is_tail(ans: str) -> str:
    r"""A sentence ending in ``... is X`` gives ``X`` (``The largest $n$ is 34`` -> 34)."""
    if len(ans) <= 500 and _PROSE_RE.search(_strip_math(ans)):
        tail = re.search(r"(?:^|\s)(?:is|are|equals)[ \t]+(\S[^\n]*)$", ans)
        if tail:
            candidate = _clean_line_answer(tail.group(1))
            if candidate and not _PROSE_RE.search(_strip_math(candidate)):
                return candidate
    return ans


def _strip_math(text: str) -> str:
    return re.sub(r"\$[^$]*\$", " ", text)


def _final_math_sentence(text: str) -> str | None:
    r"""The math of a short final sentence: ``We find that $x \lt 3$.``, ``Therefore $x \geq
    5$ is the solution.``, ``The identity matrix is $...$.``

    The sentence must hold exactly one math span, followed by nothing but a dot or "is the
    solution/answer", and must open with a conclusion ("Therefore", "Thus", "So", "We
    find", "The answer", ...); a response of that one sentence may instead lead up to the
    math with "is", ":", "that", "=" (``The identity matrix is $...$.``).
    """
    text = _END_TOKEN_RE.split(text)[0].rstrip()
    spans = _math_spans(text)
    if not spans:
        return None
    start, end, content = spans[-1]
    if not _answer_tail(text[end:]):
        return None
    before = text[:start]
    cut = max(before.rfind(". "), before.rfind(".\n"), before.rfind("\n"), before.rfind("! "),
              before.rfind("? "))
    lead = before[cut + 1 :]
    if len(spans) > 1 and spans[-2][1] > cut + 1:
        return None  # two math spans in one sentence: which one is the answer?
    if len(lead.split()) > 15:
        return None
    if not _CONCLUSION_RE.match(lead) and (cut >= 0 or not _LEAD_END_RE.search(lead)):
        return None  # "Let's compute $2+2$." commits to nothing
    return content.strip() or None


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
    last "final answer is X" / "the answer is X" / "Answer: X" / "Answer $X$" / "#### X"
    line (also "la réponse est", "la respuesta es", "die Antwort ist", "答案"), where a
    display-math block right after the phrase may run over lines; then the one math span
    of a short final sentence (see :func:`_final_math_sentence`); then the whole response
    if it is only an answer. With ``boxed_only`` only the first rule applies. A "final
    answer is X" line written after the last box, with X a math span or a number, wins
    over the box.

    ``items`` is how many answers the reference lists (``2, 3`` has two). When it is above
    one and the last ``items`` boxes sit on one line with only short glue between them
    (``x = \boxed{2} or x = \boxed{3}``), their contents are joined with commas.
    """
    boxed, found = last_boxed(response)
    if found and items > 1 and boxed is not None:
        boxed = _joined_boxes(response, items) or boxed
    if found and not boxed_only:
        later = _final_line_after_last_box(response)
        if later is not None:
            return later
    if found or boxed_only:
        return boxed.strip() if boxed and boxed.strip() else None
    best: re.Match[str] | None = None
    for pattern in (_HASH_RE, _FINAL_RE, _ANSWER_LINE_RE):
        for m in _final_matches(pattern, response):
            if best is None or m.start() > best.start():
                best = m
    if best is not None:
        ans = _after_phrase(response, best)
        return ans if ans.strip("$ \t") else None
    sentence = _final_math_sentence(response)
    if sentence is not None:
        return sentence
    return response.strip() if is_bare_answer(response) else None


_HYPOTHESIS_RE = re.compile(
    r"\b(?:suppose|supposing|assume|assuming|imagine|if|let'?s say|let us say|say)[ \t]+(?:that[ \t]+)?"
    r"(?:the[ \t]+|our[ \t]+)?$", re.I,
)


def _final_matches(pattern: re.Pattern[str], response: str) -> list[re.Match[str]]:
    """The matches of an answer pattern; for "the answer is", a premise ("Suppose the answer is
    10") is skipped and the search goes on after its phrase on the same line, for at most
    ``_PREMISES_PER_LINE`` premises a line (each retry reads the rest of the line: linear)."""
    if pattern is not _FINAL_RE:
        return list(pattern.finditer(response))
    found: list[re.Match[str]] = []
    pos, line_start, premises = 0, -1, 0
    while (m := pattern.search(response, pos)) is not None:
        start = response.rfind("\n", 0, m.start()) + 1
        if start != line_start:
            line_start, premises = start, 0
        if not _hypothetical(response, m.start()):
            found.append(m)
            pos = m.end()
        elif premises < _PREMISES_PER_LINE:
            premises += 1
            pos = m.start() + 6  # past "answer": a later phrase on this line can still match
        else:
            end = response.find("\n", m.start())
            if end < 0:
                break
            pos = end + 1
    return found


_PREMISES_PER_LINE = 4


def _hypothetical(response: str, start: int) -> bool:
    """Whether "the answer is" at ``start`` is a premise ("Suppose the answer is 10", "if the
    answer were"): a hypothesis word right before it (the 40 characters before, whitespace
    collapsed so the check stays linear)."""
    return _HYPOTHESIS_RE.search(" ".join(response[max(0, start - 40) : start].split()) + " ") is not None


_STRONG_FINAL_RE = re.compile(r"final[ \t]+answer[ \t]*(?:is|:)[ \t]*:?[ \t]*(.+)$", re.I | re.M)


def _final_line_after_last_box(response: str) -> str | None:
    """A "final answer is X" line written after the last box overrides the box, when X is a
    math span or a plain number (not prose such as "as above")."""
    last = list(_BOX_RE.finditer(response))[-1]
    end = _box_end(response, last) or last.end()
    found = None
    for m in _STRONG_FINAL_RE.finditer(response, end):
        found = m
    if found is None:
        return None
    start = _phrase_end(response, found)
    span = _span_at(response, start)
    if span is not None:
        return span[1].strip() or None
    ans = _clean_line_answer(response[start : _line_end(response, start)])
    return ans if re.fullmatch(r"[-+]?\d[\d,]*(?:\.\d+)?", ans) else None


def extract_reference(reference: object) -> str:
    r"""The gold answer as a string, read with the same rules as a response.

    The last ``\boxed{}`` (several boxes on the last boxed line, with short glue between
    them, are one list: ``\boxed{1} and \boxed{2}``); else, for a worked solution (prose),
    its answer line or final math sentence; else all of it.
    """
    text = str(reference)
    boxed, found = last_boxed(text)
    if boxed is not None:
        run = _box_run(text)
        return (", ".join(run) if len(run) > 1 else boxed).strip()
    if not found and not is_bare_answer(text):
        answer = extract_answer(text)
        if answer is not None:
            return answer.strip()
    return text.strip()


def _box_run(text: str) -> list[str]:
    """Contents of the trailing run of boxes joined by list glue (``\\boxed{2}, \\boxed{3}``,
    ``\\boxed{1} and \\boxed{2}``), for a reference only."""
    every = list(_BOX_RE.finditer(text))[-20:]
    run: list[str] = []
    start = None
    for m in reversed(every):
        end = _box_end(text, m)
        if end is None or (start is not None and (end > start or not _list_glue(text[end:start]))):
            break
        inner = text[m.end() + 1 : end - 1].strip()
        if not inner:
            break
        run.insert(0, inner)
        start = m.start()
    return run


# -- normalisation ---------------------------------------------------------------------------
_REPLACEMENTS = [
    (r"\\[dtc]frac", r"\\frac"),
    (r"^\(?([A-E])\)?[.)][ \t]+\S.*$", r"\1"),  # a choice with its text: "C. x = 42" is C
    (r"^([\s$]*[A-Za-z](?:_\{?\w+\}?)?)\s*(?:\\approx|≈)", r"\1="),
    (r"(?<=\S)\s*(?:\\approx|≈).*$", ""),
    (r",\s*\\!\s*(?=\d)", ","),
    (r"\\!", ""),
    (r"\\displaystyle|\\limits", ""),
    (r"\\(?:big|Big|bigg|Bigg)[lr]?(?![a-zA-Z])", ""),
    (r"\\left\s*\.|\\right\s*\.", ""),
    (r"\\(?:left|right)(?![a-zA-Z])", ""),
    (r"(?<!\\)\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~", " "),
    (r"(?<!\\);", ","),
    (r"\\(?:leqslant|leq|le)(?![a-zA-Z])|≤|<=", r"\\leq "),
    (r"\\(?:geqslant|geq|ge)(?![a-zA-Z])|≥|>=", r"\\geq "),
    (r"\\(?:neq|ne)(?![a-zA-Z])|≠|!=", r"\\neq "),
    (r"\\lt(?![a-zA-Z])", "<"),
    (r"\\gt(?![a-zA-Z])", ">"),
    (r"\\in(?![a-zA-Z])|∈", "="),
    (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])", DEGREE),
    (r"\\?%", PERCENT),
    # the words at the end of an answer read as the signs do ("50 percent" is 50%, so it
    # equals 0.5 too); "5 degrees Celsius" stays a number with a unit
    (r"(?<=\d) ?(?:percent|per cent)\.?$", PERCENT),
    (r"(?<=\d) ?degrees?\.?$", DEGREE),
    (r"\\\$|\$", ""),
    (r"\s*\{\s*,\s*\}\s*", ","),
    (r"\\langle(?![a-zA-Z])|⟨", "("),
    (r"\\rangle(?![a-zA-Z])|⟩", ")"),
    (r"∞", r"\\infty "),
    (r"π", r"\\pi "),
    (r"−|–", "-"),
    (r"×", r"\\times "),
    (r"·", r"\\cdot "),
    (r"\\(?:mathbf|mathit|mathrm|textrm|textbf|textit|textnormal|text|mbox|operatorname)\s*\{\s*(or|and)\s*\}", ","),
    (r"\s+(?:or|and)\s+|(?<=[)\]])\s*(?:or|and)\s*(?=[(\[])", ","),
    (r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}"),
    (r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}"),
    (r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{"),
    (r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}"),
]
_COMPILED = [(re.compile(p, re.S), r) for p, r in _REPLACEMENTS]
_TEXT_CMD = r"\\(?:mathbf|mathit|mathrm|textrm|textbf|textit|textnormal|text|mbox|operatorname)\s*"
_TRAILING_UNIT_RE = re.compile(_TEXT_CMD + r"\{[^{}]*\}\s*(?:\^\s*\{?\d\}?)?\s*$")
_PLAIN_UNIT_RE = re.compile(
    r"^([-+]?[\d.,/]*\d) ?([a-zA-Z]{2,}\.?(?: [a-zA-Z]+\.?)*)(?:\^\{?\d\}?)?$"
)
_THOUSANDS_RE = re.compile(r"(?<![\d.,])[1-9]\d{0,2}(?:,\d{3})+(?![\d,])")


# Words that never belong to a unit: after a number they make a claim about it ("5 is not
# correct", "5 or maybe 6"), so the number is not the answer on its own.
_NOT_UNITS = frozenset("""is are was were be been being isn't aren't wasn't not no never but or if maybe perhaps
    probably possibly wrong incorrect correct right false true than because since so then which that
    unless although though wait hmm guess""".split())
# a mixed number "2 1/2" is 2 + 1/2 (squashing its space would read 21/2)
_MIXED_RE = re.compile(r"(?<![\d.,/])(\d+) (\d+)/(\d+)(?![\d.,/])")


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
    if m and _NOT_UNITS & {w.rstrip(".").lower() for w in m.group(2).split()}:
        return s  # "5 is not correct": a sentence about the number, not its unit
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


_RUNS_RE = re.compile(r"\s{2,}")


def normalize(answer: str) -> str:
    """Canonical string form of an extracted answer (see the module docstring of ``math``)."""
    # each run of blanks becomes one character first (a newline if it held one), so that no
    # pattern below meets a long run: "\s+(?:or|and)\s+" on 2,000 spaces took 0.13 s
    s = _RUNS_RE.sub(lambda m: "\n" if "\n" in m.group() else " ", answer.strip())
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    if "\\begin" not in s:  # doubled backslashes of escaped text: \\frac -> \frac
        s = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", s)
    for pattern, repl in _COMPILED:
        s = pattern.sub(repl, s)
    s = _strip_units(s)
    s = _remove_thousands(s.strip())
    s = _MIXED_RE.sub(r"(\1+\2/\3)", s)
    s = _squash_spaces(s)
    s = s.rstrip(".").rstrip("\\")
    while s.startswith("{") and _braced(s, 0) == s[1:-1]:
        s = s[1:-1]
    return s
