r"""Benchmark suites as registered envs: GSM8K, MATH-500, HumanEval, MBPP.

Each suite is a :class:`~mpo_gym.env.ReasoningEnv` subclass over a fixed dataset split, graded
by the same verifier used in training (``"math"`` or ``"code"``), so one env id both trains
and evaluates (train/eval parity).

Ids: ``mpo_gym/GSM8K-v0`` (:class:`GSM8KEnv`), ``mpo_gym/MATH500-v0`` (:class:`MATH500Env`),
``mpo_gym/HumanEval-v0`` (:class:`HumanEvalEnv`), ``mpo_gym/MBPP-v0`` (:class:`MBPPEnv`),
``mpo_gym/MBPPPlus-v0`` (:class:`MBPPPlusEnv`: EvalPlus's MBPP+, 378 tasks, ``test`` only).

Splits (``split=`` env kwarg, default ``"test"``): GSM8K ``train`` (7,473) and ``test`` (1,319);
MBPP ``train`` (374), ``validation`` (90), ``test`` (500), ``prompt`` (10); MATH-500 and HumanEval
``test`` only. The env says which split it serves (``env.unwrapped.split``) and where its rows
came from (``env.unwrapped.data_source``). :func:`mpo_gym.envs.available_splits` lists them
without loading anything.

Data (see :func:`resolve_source`), the first that applies:

1. ``data_path=`` (env kwarg; ``--data-dir`` on the CLI): a data file, a suite folder
   (``.../gsm8k``) or a root folder laid out like ``<root>/gsm8k/test.jsonl``; a missing file is
   an error.
2. the ``MPO_GYM_DATA_DIR`` environment variable: a root folder with that layout; a suite
   whose file is not there falls through to step 3 (``data_source`` shows what was used).
3. ``hub_id=`` (env kwarg, e.g. ``"openai/gsm8k"``): the Hugging Face hub through
   ``datasets.load_dataset`` (needs a network or a warm cache). Only when asked for.
4. the data shipped in the package (``mpo_gym/envs/data/<suite>/``, gzip-compressed upstream
   files, each folder with its ``LICENSE`` and a ``PROVENANCE.md``: source, commit, sha256 of
   the shipped and of the upstream file). Offline, no network round-trip.

Local files are JSON Lines or one JSON array, optionally gzip-compressed (``.gz``), read with
the standard library; a malformed file raises :class:`DataFileError` naming the file and line.
Local layout, under a root folder (each name may also carry or drop a ``.gz``)::

    gsm8k/train.jsonl  gsm8k/test.jsonl        (openai/gsm8k, config "main")
    math500/test.jsonl                         (HuggingFaceH4/MATH-500)
    humaneval/HumanEval.jsonl.gz               (openai/openai_humaneval)
    mbpp/mbpp.jsonl  mbpp/sanitized-mbpp.json  (google-research-datasets/mbpp)

MBPP splits follow the upstream README by ``task_id``: 1-10 ``prompt``, 11-510 ``test``,
511-600 ``validation``, 601-974 ``train``. Loaded rows are cached per process (by source
path; a file edited during the process is not re-read).

Pinned prompt templates (``{...}`` are dataset fields):

- GSM8K and MATH-500 (chat template; one fixed few-shot turn before the problem, on by
  default, ``fewshot=False`` drops it)::

      Solve the problem. Put the final answer in \boxed{}.

      Problem: {question | problem}

  GSM8K example turn -- user: ``Solve the problem. Put the final answer in \boxed{}.`` /
  ``Problem: A baker makes 4 trays of 12 cookies and sells 30 of them. How many cookies are
  left?``; assistant: ``The baker makes 4 * 12 = 48 cookies. After selling 30, 48 - 30 = 18
  cookies are left.`` / ``The final answer is \boxed{18}.``

  MATH-500 example turn -- user: the same instruction with ``Problem: Compute $\frac{2}{3} +
  \frac{1}{6}$.``; assistant: ``Write $\frac{2}{3} = \frac{4}{6}$, so the sum is $\frac{4}{6}
  + \frac{1}{6} = \frac{5}{6}$.`` / ``The final answer is \boxed{\frac{5}{6}}.``

- HumanEval, ``style="chat"`` (default; chat template, no few-shot)::

      Complete the following Python function. Reply with the complete function (signature
      and body) in one ```python code block.

      ```python
      {prompt}```

- HumanEval, ``style="completion"``: the raw ``{prompt}`` tokens, *no* chat template, for base
  models. The episode also stops at ``\ndef ``, ``\nclass ``, ``\nif __name__``, ``\nprint(``,
  ``\n#``, ``\n```` ``; the response is cut at the first of these before verification, and the
  code verifier joins the body to the prompt.

- MBPP (chat template, no few-shot; the three ``test_list`` asserts one per line)::

      You are an expert Python programmer, and here is your task: {text} Your code should
      pass these tests:

      {test_list[0]}
      {test_list[1]}
      {test_list[2]}

      Reply with the code in one ```python code block.

References (what the verifier checks): GSM8K the number after ``####`` without commas;
MATH-500 ``answer``; HumanEval ``{"entry_point", "test", "prompt"}``; MBPP
``{"test_list", "test_setup_code"}`` (challenge tests are kept in ``Task.metadata``).
Solutions (``Task.solution``, for SFT/MTP warm-up and the gold self-check): GSM8K the worked
answer with ``<<...>>`` calculator notes removed and the ``#### N`` line rewritten as ``The final
answer is \boxed{N}.``; MATH-500 ``solution``; HumanEval ``prompt + canonical_solution`` in a
fenced block (chat) or the bare body (completion); MBPP ``code`` in a fenced block.

What this module does not do: it does not download anything itself (``datasets`` does, when
``hub_id`` is given), does not de-duplicate train against test (GSM8K's and MBPP's splits are
upstream's), and has no train split for MATH-500 or HumanEval.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mpo_gym.env import ReasoningEnv
from mpo_gym.task import ListTaskSource, Task
from mpo_gym.verifiers.base import Verdict, Verifier

__all__ = [
    "DATA_DIR_ENV",
    "SUITES",
    "DataFileError",
    "GSM8KEnv",
    "HumanEvalEnv",
    "MATH500Env",
    "MBPPEnv",
    "MBPPPlusEnv",
    "SuiteEnv",
    "SuiteInfo",
    "check_data",
    "load_rows",
    "load_tasks",
    "read_json_records",
    "resolve_source",
]

DATA_DIR_ENV = "MPO_GYM_DATA_DIR"

MATH_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."
GSM8K_EXAMPLE = (
    f"{MATH_INSTRUCTION}\n\nProblem: A baker makes 4 trays of 12 cookies and sells 30 of them. "
    "How many cookies are left?",
    "The baker makes 4 * 12 = 48 cookies. After selling 30, 48 - 30 = 18 cookies are left.\n"
    "The final answer is \\boxed{18}.",
)
MATH_EXAMPLE = (
    f"{MATH_INSTRUCTION}\n\nProblem: Compute $\\frac{{2}}{{3}} + \\frac{{1}}{{6}}$.",
    "Write $\\frac{2}{3} = \\frac{4}{6}$, so the sum is $\\frac{4}{6} + \\frac{1}{6} = "
    "\\frac{5}{6}$.\nThe final answer is \\boxed{\\frac{5}{6}}.",
)
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (signature and "
    "body) in one ```python code block."
)
MBPP_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass "
    "these tests:\n\n{tests}\n\nReply with the code in one ```python code block."
)
COMPLETION_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


@dataclass(frozen=True)
class SuiteInfo:
    """Where a suite's data lives.

    Attributes:
        name: short suite name (``"gsm8k"``).
        env_id: the registered env id.
        hub_id: Hugging Face dataset id.
        folder: sub-folder of a local data root.
        files: ``(variant, split) -> file name`` inside ``folder`` (split ``"*"`` = all splits
            in one file, filtered by ``task_id``).
        splits: the splits the suite has.
        variants: hub configs (the first is the default).
    """

    name: str
    env_id: str
    hub_id: str
    folder: str
    files: dict[tuple[str, str], str]
    splits: tuple[str, ...]
    variants: tuple[str, ...] = ("default",)


SUITES: dict[str, SuiteInfo] = {
    "gsm8k": SuiteInfo(
        "gsm8k", "mpo_gym/GSM8K-v0", "openai/gsm8k", "gsm8k",
        {("main", "train"): "train.jsonl", ("main", "test"): "test.jsonl"},
        ("train", "test"), ("main",),
    ),
    "math500": SuiteInfo(
        "math500", "mpo_gym/MATH500-v0", "HuggingFaceH4/MATH-500", "math500",
        {("default", "test"): "test.jsonl"}, ("test",),
    ),
    "humaneval": SuiteInfo(
        "humaneval", "mpo_gym/HumanEval-v0", "openai/openai_humaneval", "humaneval",
        {("openai_humaneval", "test"): "HumanEval.jsonl.gz"}, ("test",), ("openai_humaneval",),
    ),
    "mbpp": SuiteInfo(
        "mbpp", "mpo_gym/MBPP-v0", "google-research-datasets/mbpp", "mbpp",
        {("full", "*"): "mbpp.jsonl", ("sanitized", "*"): "sanitized-mbpp.json"},
        ("train", "validation", "test", "prompt"), ("full", "sanitized"),
    ),
    "mbppplus": SuiteInfo(
        "mbppplus", "mpo_gym/MBPPPlus-v0", "evalplus/mbppplus", "mbppplus",
        {("default", "test"): "mbppplus_tests.jsonl"}, ("test",),
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------- loading
class DataFileError(ValueError):
    """A suite data file that cannot be read; the message names the file and the line."""


# Fields every row must have (MBPP also needs ``text`` (full) or ``prompt`` (sanitized)).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("question", "answer"),
    "math500": ("problem", "solution", "answer"),
    "humaneval": ("task_id", "prompt", "entry_point", "canonical_solution", "test"),
    "mbpp": ("task_id", "code", "test_list"),
    "mbppplus": ("task_id", "entry_point", "prompt", "canonical_solution", "n_base", "tests"),
}
EMBEDDED_PACKAGE = "mpo_gym.envs"


def _file_name(info: SuiteInfo, variant: str, split: str) -> str:
    return info.files.get((variant, split)) or info.files[(variant, "*")]


def _gz_name(name: str) -> str:
    return name if name.endswith(".gz") else f"{name}.gz"


def _embedded(info: SuiteInfo, variant: str, split: str) -> Any:
    """The shipped file of a suite split, as an ``importlib.resources`` Traversable."""
    from importlib.resources import files

    name = _gz_name(_file_name(info, variant, split))
    return files(EMBEDDED_PACKAGE).joinpath("data").joinpath(info.folder).joinpath(name)


def resolve_source(
    suite: str,
    split: str = "test",
    data_path: str | os.PathLike | None = None,
    variant: str | None = None,
    hub_id: str | None = None,
) -> str:
    """Where a suite split's rows come from; reads nothing but file names.

    Returns ``"file:<path>"``, ``"hub:<dataset id>"`` or ``"embedded:<suite>/<file>"``, in the
    order ``data_path``, ``MPO_GYM_DATA_DIR``, ``hub_id``, shipped data (module docstring).

    Raises:
        ValueError: unknown suite, split or variant (the message lists what exists).
        FileNotFoundError: ``data_path`` holds no file for this suite/split.
    """
    info, variant = _info(suite, split, variant)
    path = _local_file(info, variant, split, data_path)
    if path is not None:
        return f"file:{path}"
    if hub_id:
        return f"hub:{hub_id}"
    return f"embedded:{info.folder}/{_gz_name(_file_name(info, variant, split))}"


def load_rows(
    suite: str,
    split: str = "test",
    data_path: str | os.PathLike | None = None,
    variant: str | None = None,
    hub_id: str | None = None,
) -> tuple[dict[str, Any], ...]:
    """The raw dataset rows of one suite split (cached per process).

    Args:
        suite: ``"gsm8k"``, ``"math500"``, ``"humaneval"`` or ``"mbpp"``.
        split: a split of the suite (``SUITES[suite].splits``).
        data_path: a local file, suite folder or data root; tried first.
        variant: hub config (``"main"``; MBPP ``"full"`` or ``"sanitized"``).
        hub_id: a Hugging Face dataset id to load from when no local file applies (otherwise
            the shipped data is used).

    Raises:
        ValueError: unknown suite, split or variant.
        FileNotFoundError: ``data_path`` is given but holds no file for this suite/split.
        DataFileError: the file is not valid JSON Lines / JSON, or a row lacks a field.
        RuntimeError: ``hub_id`` was given and the hub could not be reached.
    """
    info, variant = _info(suite, split, variant)
    source = resolve_source(suite, split, data_path, variant, hub_id)
    return _load_rows_cached(info.name, split, variant, source)


def _info(suite: str, split: str, variant: str | None) -> tuple[SuiteInfo, str]:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {sorted(SUITES)}")
    info = SUITES[suite]
    variant = variant or info.variants[0]
    if split not in info.splits:
        raise ValueError(
            f"{info.env_id} has no split {split!r}; available splits: {', '.join(info.splits)}"
        )
    if variant not in info.variants:
        raise ValueError(f"{suite} has variants {list(info.variants)}; got {variant!r}")
    return info, variant


def _local_file(info: SuiteInfo, variant: str, split: str, data_path: Any) -> Path | None:
    """The local file for a split (``data_path``, then ``MPO_GYM_DATA_DIR``), or None."""
    name = _file_name(info, variant, split)
    names = (name, name.removesuffix(".gz") if name.endswith(".gz") else f"{name}.gz")
    roots = [(Path(data_path).expanduser(), True)] if data_path else []
    if os.environ.get(DATA_DIR_ENV):
        roots.append((Path(os.environ[DATA_DIR_ENV]).expanduser(), False))
    for root, strict in roots:
        if root.is_file():
            return root.resolve()
        candidates = [d / n for d in (root / info.folder, root) for n in names]
        for candidate in candidates:
            if candidate.is_file():
                return candidate.resolve()
        if strict:
            raise FileNotFoundError(
                f"data_path={str(root)!r} has no {info.name} {split} file: looked for "
                + ", ".join(str(c) for c in candidates)
            )
    return None


@functools.lru_cache(maxsize=32)
def _load_rows_cached(
    suite: str, split: str, variant: str, source: str
) -> tuple[dict[str, Any], ...]:
    info = SUITES[suite]
    kind, _, where = source.partition(":")
    if kind == "hub":
        rows = _load_hub(info, split, variant, where)
        _check_fields(suite, [(i + 1, r) for i, r in enumerate(rows)], f"hub:{where}", "row")
        return tuple(rows)
    if kind == "embedded":
        resource = _embedded(info, variant, split)
        name = f"{EMBEDDED_PACKAGE}/data/{where} (shipped with the package)"
        try:
            raw = resource.read_bytes()
        except OSError as exc:
            raise DataFileError(f"{name}: cannot be read ({exc}); reinstall mpo-gym") from exc
    else:
        name = where
        raw = Path(where).read_bytes()
    records = read_json_records(raw, name)
    _check_fields(suite, records, name, "line")
    rows = [r for _, r in records]
    if (variant, "*") in info.files:
        rows = _filter_task_ids(rows, split)
    return tuple(rows)


def read_json_records(raw: bytes, name: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` pairs of a JSON Lines file or a JSON array (gzip allowed).

    Blank lines are skipped. ``name`` is used in error messages only.

    Raises:
        DataFileError: bad gzip, not UTF-8, invalid JSON, a record that is not an object, or no
            records; the message names ``name`` and the line.
    """
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFileError(f"{name}: not a readable gzip file ({exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = raw.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{name}, line {bad_line}: not UTF-8 text ({exc.reason})") from exc
    if text.lstrip().startswith("["):
        records = _json_array_records(text, name)
    else:
        records = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(
                    f"{name}, line {number}: invalid JSON ({exc.msg}, column {exc.colno})"
                ) from None
            records.append((number, obj))
    if not records:
        raise DataFileError(f"{name}: no records (empty file)")
    for number, obj in records:
        if not isinstance(obj, dict):
            raise DataFileError(
                f"{name}, line {number}: expected a JSON object, got {type(obj).__name__}"
            )
    return records


def _json_array_records(text: str, name: str) -> list[tuple[int, Any]]:
    """Items of a top-level JSON array with the line each starts on."""
    decoder = json.JSONDecoder()
    out: list[tuple[int, Any]] = []
    pos = text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    def fail(p: int, what: str) -> DataFileError:
        return DataFileError(f"{name}, line {text.count(chr(10), 0, p) + 1}: invalid JSON ({what})")

    last = pos
    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return out
    while True:
        line += text.count("\n", last, pos)
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from None
        out.append((line, obj))
        last, pos = pos, skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            if text[skip(pos + 1) :].strip():
                raise fail(skip(pos + 1), "extra data after the array")
            return out
        else:
            raise fail(pos, "expected ',' or ']' after an array item")


def _check_fields(suite: str, records: list[tuple[int, Any]], name: str, unit: str) -> None:
    """Every row has the fields the task maker reads (message: file, line, field)."""
    need = REQUIRED_FIELDS[suite]
    for number, row in records:
        missing = [k for k in need if k not in row]
        if suite == "mbpp" and "text" not in row and "prompt" not in row:
            missing.append("text")
        if missing:
            raise DataFileError(
                f"{name}, {unit} {number}: missing field {missing[0]!r} "
                f"(a {suite} row needs {', '.join(need)})"
            )
        if suite == "gsm8k" and "####" not in str(row["answer"]):
            raise DataFileError(f"{name}, {unit} {number}: 'answer' has no '#### N' final line")
        if suite == "mbpp" and not isinstance(row["task_id"], int):
            raise DataFileError(f"{name}, {unit} {number}: 'task_id' is not an integer")


def _load_hub(info: SuiteInfo, split: str, variant: str, hub_id: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    config = None if variant == "default" else variant
    try:
        return load_dataset(hub_id, config, split=split).to_list()
    except Exception as exc:  # offline, missing cache, renamed dataset: say what to do
        raise RuntimeError(
            f"could not load {info.name} ({split}) from the hub dataset {hub_id!r} "
            f"({type(exc).__name__}: {str(exc)[:200]}). Drop hub_id to use the data shipped "
            f"with the package, or pass data_path=<file or folder> (--data-dir on the CLI), or "
            f"set {DATA_DIR_ENV}=<root> with {info.folder}/{_file_name(info, variant, split)}."
        ) from exc


def _filter_task_ids(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    low, high = MBPP_SPLITS[split]
    return [r for r in rows if low <= int(r["task_id"]) <= high]


# ---------------------------------------------------------------------------- row -> Task
def gsm8k_reference(answer: str) -> str:
    """The gold number after ``####`` with thousands separators removed."""
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k_solution(answer: str) -> str:
    """The worked answer without ``<<...>>`` notes, ending in ``\\boxed{N}``."""
    body = re.sub(r"<<[^>]*>>", "", answer.rpartition("####")[0]).rstrip()
    return f"{body}\nThe final answer is \\boxed{{{gsm8k_reference(answer)}}}."


def _math_prompt(problem: str) -> str:
    return f"{MATH_INSTRUCTION}\n\nProblem: {problem}"


def _gsm8k_task(row: dict[str, Any], index: int, split: str, style: str) -> Task:
    return Task(
        prompt=_math_prompt(row["question"]),
        reference=gsm8k_reference(row["answer"]),
        id=f"gsm8k/{split}/{index}",
        solution=gsm8k_solution(row["answer"]),
        metadata={"question": row["question"], "answer": row["answer"]},
    )


def _math500_task(row: dict[str, Any], index: int, split: str, style: str) -> Task:
    uid = str(row.get("unique_id") or f"{split}/{index}").removesuffix(".json")
    return Task(
        prompt=_math_prompt(row["problem"]),
        reference=row["answer"],
        id=f"math500/{uid}",
        solution=row["solution"],
        metadata={k: row[k] for k in ("problem", "subject", "level", "unique_id") if k in row},
    )


def _humaneval_task(row: dict[str, Any], index: int, split: str, style: str) -> Task:
    prompt = row["prompt"]
    if style == "completion":
        user, solution = prompt, row["canonical_solution"]
    else:
        user = f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{prompt}```"
        solution = f"```python\n{prompt}{row['canonical_solution']}```"
    return Task(
        prompt=user,
        reference={"entry_point": row["entry_point"], "test": row["test"], "prompt": prompt},
        id=str(row["task_id"]),
        solution=solution,
        metadata={
            "entry_point": row["entry_point"],
            "canonical_solution": row["canonical_solution"],
        },
    )


def _mbpp_task(row: dict[str, Any], index: int, split: str, style: str) -> Task:
    text = row.get("text") or row["prompt"]  # full: "text"; sanitized: "prompt"
    setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
    code = row["code"].replace("\r\n", "\n")
    return Task(
        prompt=MBPP_TEMPLATE.format(text=text, tests="\n".join(row["test_list"])),
        reference={"test_list": list(row["test_list"]), "test_setup_code": setup},
        id=f"mbpp/{row['task_id']}",
        solution=f"```python\n{code}\n```",
        metadata={"text": text, "challenge_test_list": list(row.get("challenge_test_list") or [])},
    )


def mbppplus_prompt_parts(prompt: str) -> tuple[str, str]:
    """EvalPlus's MBPP+ prompt (a docstring: the task text, then one example assert) as
    ``(text, assert)``."""
    lines = prompt.strip().removeprefix('"""').removesuffix('"""').strip("\n").split("\n")
    shown = [i for i, line in enumerate(lines) if line.startswith("assert")]
    if not shown:
        return " ".join(lines).strip(), ""
    return " ".join(lines[: shown[-1]]).strip(), lines[shown[-1]].strip()


def _mbppplus_task(row: dict[str, Any], index: int, split: str, style: str) -> Task:
    from mpo_gym.verifiers.code_plus import PlusTests

    text, shown = mbppplus_prompt_parts(row["prompt"])
    number = str(row["task_id"]).rpartition("/")[2]
    record = json.dumps(row, separators=(",", ":"), ensure_ascii=False)
    plus = PlusTests(str(row["task_id"]), str(row["entry_point"]), int(row["n_base"]), len(row["tests"]), record)
    return Task(
        prompt=MBPP_TEMPLATE.format(text=text, tests=shown),
        reference={"test_list": [], "test_setup_code": "", "plus": plus},
        id=f"mbppplus/{number}",
        solution=f"```python\n{row['canonical_solution'].strip()}\n```",
        metadata={"text": text, "shown_assert": shown, "task_id": row["task_id"],
                  "entry_point": row["entry_point"], "mbpp_asserts": bool(row.get("mbpp_asserts", False))},
    )


_MAKERS = {
    "gsm8k": _gsm8k_task,
    "math500": _math500_task,
    "humaneval": _humaneval_task,
    "mbpp": _mbpp_task,
    "mbppplus": _mbppplus_task,
}


def load_tasks(
    suite: str,
    split: str = "test",
    data_path: str | os.PathLike | None = None,
    variant: str | None = None,
    style: str = "chat",
    hub_id: str | None = None,
) -> tuple[Task, ...]:
    """The suite split as :class:`~mpo_gym.task.Task` objects (cached, see :func:`load_rows`)."""
    if style not in ("chat", "completion"):
        raise ValueError(f"style must be 'chat' or 'completion'; got {style!r}")
    info, variant = _info(suite, split, variant)
    source = resolve_source(suite, split, data_path, variant, hub_id)
    return _load_tasks_cached(info.name, split, variant, source, style)


def check_data(
    env_id: str,
    split: str = "test",
    data_path: str | os.PathLike | None = None,
    variant: str | None = None,
    hub_id: str | None = None,
) -> int | None:
    """Load the tasks a suite env id would serve and return their number (None: not a suite).

    For command lines, to fail before a model is loaded: it raises what ``gym.make`` would
    (``ValueError`` for a split the suite lacks, ``FileNotFoundError``, :class:`DataFileError`
    naming file and line, ``RuntimeError`` for an unreachable ``hub_id``). The shipped data
    loads in well under a second and is cached, so the env made afterwards reuses it.
    """
    suite = next((name for name, info in SUITES.items() if info.env_id == env_id), None)
    if suite is None:
        return None
    return len(load_tasks(suite, split, data_path, variant, "chat", hub_id))


@functools.lru_cache(maxsize=32)
def _load_tasks_cached(
    suite: str, split: str, variant: str, source: str, style: str
) -> tuple[Task, ...]:
    rows = _load_rows_cached(suite, split, variant, source)
    make = _MAKERS[suite]
    return tuple(make(row, i, split, style) for i, row in enumerate(rows))


# ---------------------------------------------------------------------------- envs
class StopTruncatingVerifier:
    """Cuts a response at its first stop string, then defers to the wrapped verifier.

    Used in completion style, where the episode ends *on* a stop string (``"\\ndef "``) that is
    not part of the answer.
    """

    def __init__(self, inner: Verifier, stop: Sequence[str]):
        self.inner, self.stop = inner, tuple(stop)

    def cut(self, response: str) -> str:
        ends = [response.find(s) for s in self.stop if s in response]
        return response[: min(ends)] if ends else response

    def verify(self, response: str, reference: Any) -> Verdict:
        return self.inner.verify(self.cut(response), reference)

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[Verdict]:
        return self.inner.verify_batch([self.cut(r) for r in responses], references)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.inner, name)


class SuiteEnv(ReasoningEnv):
    """Base of the benchmark envs: a dataset split, a pinned template and a verifier.

    Args:
        split: dataset split (``"test"``; GSM8K also ``"train"``; MBPP ``"train"``,
            ``"validation"``, ``"test"``, ``"prompt"``). A split the suite lacks is a
            ``ValueError`` naming the available ones.
        data_path: local file or folder, tried before ``MPO_GYM_DATA_DIR``.
        variant: hub config (MBPP: ``"full"`` or ``"sanitized"``).
        hub_id: load from this Hugging Face dataset when no local file applies (default: the
            data shipped with the package).
        style: ``"chat"`` (chat template) or, where supported, ``"completion"`` (raw prompt).
        **kwargs: passed to :class:`~mpo_gym.env.ReasoningEnv` (``tokenizer``, ``block_size``,
            ``max_new_tokens``, ``fewshot``, ...).
    """

    suite: ClassVar[str] = ""
    default_verifier: ClassVar[str] = "math"
    examples: ClassVar[tuple[tuple[str, str], ...]] = ()
    styles: ClassVar[tuple[str, ...]] = ("chat",)

    def __init__(
        self,
        split: str = "test",
        data_path: str | None = None,
        variant: str | None = None,
        style: str = "chat",
        hub_id: str | None = None,
        **kwargs: Any,
    ):
        if style not in self.styles:
            raise ValueError(
                f"{type(self).__name__} supports style {list(self.styles)}; got {style!r}"
            )
        source = resolve_source(self.suite, split, data_path, variant, hub_id)
        tasks = self.adapt_tasks(load_tasks(self.suite, split, data_path, variant, style, hub_id))
        task_source = ListTaskSource(tasks, examples=self.examples if style == "chat" else ())
        kwargs.setdefault("verifier", self.default_verifier)
        kwargs.setdefault("max_prompt_tokens", 2048)
        if style == "completion":
            kwargs["stop"] = tuple(kwargs.get("stop", ())) + COMPLETION_STOP
        super().__init__(task_source, **kwargs)
        self.split, self.data_path, self.variant, self.style = split, data_path, variant, style
        self.hub_id = hub_id
        #: where the rows came from: ``"file:<path>"``, ``"hub:<id>"`` or ``"embedded:<file>"``
        self.data_source = source
        if style == "completion":
            self.verifier = StopTruncatingVerifier(self.verifier, COMPLETION_STOP)

    def adapt_tasks(self, tasks: Sequence[Task]) -> Sequence[Task]:
        """The loaded tasks as this env poses them (a suite may rewrite prompts or references)."""
        return tasks

    @property
    def protocol(self) -> str:
        """Which published protocol this env's scores follow, and where they differ from it
        (recorded with every evaluation of the suite)."""
        return ""

    def _math_protocol(self, name: str) -> str:
        shots = "one fixed example turn" if self.fewshot and self.examples else "zero-shot"
        return (f"{name} {self.split}, chat prompt ({shots}, answer in \\boxed{{}}); the final answer is read and "
                "compared for mathematical equivalence by MathVerifier (the math-verify/lighteval style of "
                "grading, not lm-eval-harness's exact string match); pass@k by the unbiased estimator")

    def prompt_ids(self, index: int) -> np.ndarray:
        """Chat-rendered prompt ids, or in completion style the raw prompt's ids (cached)."""
        if self.style != "completion":
            return super().prompt_ids(index)
        if index not in self._prompt_cache:
            ids = np.asarray(
                _encode_plain(self.tokenizer, self.tasks[index].prompt), dtype=np.int64
            )
            if ids.size > self.max_prompt_tokens:
                raise ValueError(f"task {index} has {ids.size} prompt tokens > max_prompt_tokens")
            self._prompt_cache[index] = ids
        return self._prompt_cache[index]


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # simple tokenizers (CharTokenizer) take no options
        return list(tokenizer.encode(text))


class GSM8KEnv(SuiteEnv):
    """GSM8K grade-school math (``train``/``test``), math verifier, one few-shot turn."""

    suite, default_verifier, examples = "gsm8k", "math", (GSM8K_EXAMPLE,)

    @property
    def protocol(self) -> str:
        return self._math_protocol("GSM8K (Cobbe et al., 2021)") + "; the gold is the number after ####"


class MATH500Env(SuiteEnv):
    """MATH-500 competition math (``test`` only), math verifier, one few-shot turn."""

    suite, default_verifier, examples = "math500", "math", (MATH_EXAMPLE,)

    @property
    def protocol(self) -> str:
        return self._math_protocol("MATH-500 (Lightman et al., 2023)")


class HumanEvalEnv(SuiteEnv):
    """HumanEval (``test`` only), sandboxed code verifier; ``style="chat"`` or ``"completion"``."""

    suite, default_verifier, styles = "humaneval", "code", ("chat", "completion")

    @property
    def protocol(self) -> str:
        shape = ("completion: the raw prompt, the body joined to it (the original protocol)" if self.style == "completion"
                 else "chat: the whole function in a code block, joined to the prompt's imports and helpers")
        return ("HumanEval (Chen et al., 2021), pass@k by the unbiased estimator on each task's check(candidate) "
                f"tests, sandboxed; {shape}; not HumanEval+ (EvalPlus's extra tests)")


MBPP_PROMPT_TESTS = ("first", "all")
_ADAPTED: dict[tuple[int, str, bool], tuple[Sequence[Task], list[Task]]] = {}


def mbppplus_index() -> dict[int, Any]:
    """MBPP task number -> :class:`~mpo_gym.verifiers.code_plus.PlusTests`, for the MBPP+ tasks
    whose reference solution passes the MBPP task's own asserts (322 of 378; on the others MBPP+
    changed the signature, the name or the expected values, so the two test sets contradict
    each other). From ``MPO_GYM_DATA_DIR/mbppplus/`` when there, else the data shipped."""
    return {int(str(t.metadata["task_id"]).rpartition("/")[2]): t.reference["plus"]
            for t in load_tasks("mbppplus", "test") if t.metadata["mbpp_asserts"]}


class MBPPEnv(SuiteEnv):
    """MBPP (``train``/``test``/``validation``/``prompt``; ``variant`` full or sanitized).

    Args:
        prompt_tests: which asserts the prompt shows. ``"first"`` (default): only the first,
            which gives the function's name and signature, and the reward runs every assert of
            ``test_list`` plus the task's ``challenge_test_list``, so a response that replays
            the prompt's asserts as a lookup table passes only where the graded asserts repeat
            the shown one (the prompt-lookup attack: 1 of the 874 train and test tasks, whose
            three asserts are the same call, against every task with ``"all"``). This is EvalPlus's MBPP prompt
            shape (one example assert). ``"all"``: the original paper's prompt (Austin et al.,
            2021), all three asserts shown and graded on those three: comparable with figures
            published that way, but every graded assert is in the prompt, so never train on it.
        plus_tests: also grade with MBPP+'s tests (EvalPlus v0.2.0: the reference solution's
            outputs on its base and plus inputs, compared by EvalPlus's rule; see
            :mod:`mpo_gym.verifiers.code_plus`) on the tasks MBPP+ covers consistently (of the
            224 test, 108 train, 39 validation and 7 prompt tasks MBPP+ has, those where its
            reference solution passes the task's own asserts and its function is the one the
            first assert calls; ``env.plus_covered`` counts them). Default
            (``None``): on with ``prompt_tests="first"``, off with ``"all"``. On is the
            default for training because it is the stronger reward: MBPP's three asserts leave
            edge cases open (empty lists, negative numbers, ties) and a policy is otherwise paid
            for code that only handles the shown kind of input; the extra inputs run in the same
            sandboxed process as the asserts, under the same time limit, at most 148 per task
            (the per-response cost is measured in ``benchmarks/bench_code_verifier.py --mbpp``).
            It mixes two test sets, so it is a training reward, not a published protocol. For
            held-out numbers use a published one: ``prompt_tests="all", plus_tests=False`` is
            the original MBPP protocol (500 test tasks, their three asserts), and
            ``mpo_gym/MBPPPlus-v0`` is MBPP+'s (its 378 tasks, base and plus inputs);
            :attr:`protocol` says which one an env grades with. ``plus_tests=True`` with
            ``prompt_tests="all"`` is an error (no protocol has it).
    """

    suite, default_verifier = "mbpp", "code"

    def __init__(self, *args: Any, prompt_tests: str = "first", plus_tests: bool | None = None, **kwargs: Any):
        self.plus_tests: bool
        if prompt_tests not in MBPP_PROMPT_TESTS:
            raise ValueError(f"prompt_tests must be one of {MBPP_PROMPT_TESTS}; got {prompt_tests!r}")
        if plus_tests is None:
            plus_tests = prompt_tests == "first"
        if not isinstance(plus_tests, bool):
            raise ValueError(f"plus_tests must be True, False or None; got {plus_tests!r}")
        if plus_tests and prompt_tests == "all":
            raise ValueError("plus_tests=True needs prompt_tests='first': prompt_tests='all' is the original "
                             "protocol, which grades the three shown asserts only (MBPP+ is mpo_gym/MBPPPlus-v0)")
        self.prompt_tests, self.plus_tests = prompt_tests, plus_tests
        super().__init__(*args, **kwargs)
        #: how many of the env's tasks carry MBPP+ tests
        self.plus_covered = sum(1 for i in range(len(self.tasks)) if "plus" in self.tasks[i].reference)

    @property
    def protocol(self) -> str:
        name = f"MBPP (Austin et al., 2021) {self.variant or 'full'} {self.split}"
        if self.prompt_tests == "all":
            return (f"{name}: the original protocol, all three test_list asserts shown in the prompt and graded "
                    "(every graded assert is in the prompt: never train on it); pass@k, sandboxed")
        shown = f"{name}: the prompt shows the first assert only (EvalPlus's prompt shape), graded on every test_list and challenge_test_list assert"
        if not self.plus_tests:
            return (f"{shown}; pass@k, sandboxed; not MBPP+ (EvalPlus's extra tests), so not comparable with MBPP+ "
                    "figures, nor with three-assert prompts (prompt_tests='all')")
        return (f"{shown} and, on the {self.plus_covered} of {len(self.tasks)} tasks MBPP+ covers, on MBPP+'s base "
                "and plus inputs too (EvalPlus v0.2.0 reference outputs and comparison rule); pass@k, sandboxed; a "
                "training reward that follows no published protocol: not comparable with MBPP figures "
                "(prompt_tests='all', plus_tests=False) nor MBPP+ figures (mpo_gym/MBPPPlus-v0)")

    def adapt_tasks(self, tasks: Sequence[Task]) -> Sequence[Task]:
        if self.prompt_tests == "all":
            return tasks
        key = (id(tasks), self.prompt_tests, self.plus_tests)  # the loaded list is cached: so is its adaptation
        if key not in _ADAPTED or _ADAPTED[key][0] is not tasks:
            _ADAPTED[key] = (tasks, self._first_assert_only(tasks, mbppplus_index() if self.plus_tests else {}))
        return _ADAPTED[key][1]

    @staticmethod
    def _first_assert_only(tasks: Sequence[Task], plus: dict[int, Any]) -> list[Task]:
        from mpo_gym.verifiers.code import entry_point_of

        out = []
        for task in tasks:
            tests = list(task.reference["test_list"])
            graded = tests + [t for t in task.metadata.get("challenge_test_list", []) if t not in tests]
            prompt = MBPP_TEMPLATE.format(text=task.metadata["text"], tests="\n".join(tests[:1]))
            reference = {**task.reference, "test_list": graded}
            extra = plus.get(int(task.id.rpartition("/")[2]))
            if extra is not None and extra.entry_point == entry_point_of(task.reference):
                reference["plus"] = extra
            out.append(dataclasses.replace(task, prompt=prompt, reference=reference,
                                           metadata={**task.metadata, "prompt_tests": "first"}))
        return out


class MBPPPlusEnv(SuiteEnv):
    """MBPP+ (EvalPlus v0.2.0, Liu et al., 2023): its 378 tasks (``test`` only), graded as EvalPlus
    grades them.

    The prompt is the pinned MBPP template with MBPP+'s task text and its one example assert
    (EvalPlus's prompt; its own chat instruction differs). The reward is MBPP+'s tests only:
    the reference solution's outputs on the base inputs (MBPP's own, as EvalPlus rebuilt them)
    and on the plus inputs, compared by EvalPlus's rule (``==``, its special oracles for eleven
    tasks, floats within the task's ``atol`` or ``1e-6``); MBPP's asserts are not graded (where
    MBPP+ corrected them, its outputs win). The shipped outputs (``mpo_gym/envs/data/mbppplus/``,
    Apache-2.0, see its ``PROVENANCE.md``) keep the inputs the reference solution answers with
    plain values within a per-task time and size cap: 1,173 of the 1,174 base inputs and
    39,277 of the 39,841 plus inputs. MBPP+'s tasks come from all of MBPP's splits (train ones included), as
    the benchmark does: evaluate on it, do not train on it.
    """

    suite, default_verifier = "mbppplus", "code"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.plus_tests_total = sum(self.tasks[i].reference["plus"].n for i in range(len(self.tasks)))

    @property
    def protocol(self) -> str:
        return (f"MBPP+ (EvalPlus v0.2.0, Liu et al., 2023) {self.split}, {len(self.tasks)} tasks: the prompt shows the "
                "task text and one example assert (EvalPlus's prompt) in the pinned MBPP template, graded on MBPP+'s "
                "base and plus inputs against the reference solution's outputs by EvalPlus's rule (==, its special "
                f"oracles, floats within atol); {self.plus_tests_total} of the 41,015 inputs (those kept within the "
                "shipped data's time and size caps); not MBPP's asserts; pass@k, sandboxed")
