"""Functional tests for ``CodeVerifier``: datasets, reference shapes, extraction, statuses."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpo_gym.verifiers import STATUSES, Verdict, make_verifier
from mpo_gym.verifiers.code import CodeVerifier, assemble, extract_code, validate_reference
from mpo_gym.verifiers.code_judge import normalize_output
from mpo_gym.verifiers.sandbox import probe

pytestmark = pytest.mark.skipif(not probe().strong, reason="needs bubblewrap (strong sandbox)")


# MBPP rows whose own reference solution cannot pass here, and why:
MBPP_UNSUPPORTED = {
    367: "test setup builds objects of a class the solution defines (Node)",
    927: "test setup builds objects of a class the solution defines (Node)",
    533: "a test passes a type object (int) as an argument",
    601: "tests build objects of a class the solution defines (Pair)",
}
ADD = {
    "entry_point": "add",
    "prompt": "from typing import List\n\n\ndef add(a: int, b: int) -> int:\n"
    '    """Add two numbers."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier(timeout_s=10.0) as v:
        yield v


@pytest.fixture(scope="module")
def quick():
    """A verifier with a short deadline, for checks that are meant to time out."""
    with CodeVerifier(timeout_s=2.0) as v:
        yield v


def _rows(suite: str, variant: str | None = None) -> list[dict]:
    """Every row of every split of a suite, from the data shipped in the package (or an
    override: ``MPO_GYM_DATA_DIR``); skips when there is none."""
    try:
        from mpo_gym.envs.suites import SUITES, load_rows

        return [
            dict(row)
            for split in SUITES[suite].splits
            for row in load_rows(suite, split, variant=variant)
        ]
    except (ImportError, OSError, ValueError) as exc:
        pytest.skip(f"{suite} data not available: {exc}")


def _humaneval() -> list[dict]:
    return _rows("humaneval")


def _he_ref(row: dict) -> dict:
    return {"entry_point": row["entry_point"], "test": row["test"], "prompt": row["prompt"]}


def _mbpp() -> list[dict]:
    return _rows("mbpp")


def _mbpp_ref(row: dict) -> dict:
    return {"test_list": row["test_list"], "test_setup_code": row["test_setup_code"]}


# --- datasets -------------------------------------------------------------------------------


def test_humaneval_canonical_solutions_all_pass(verifier):
    rows = _humaneval()
    verdicts = verifier.verify_batch(
        [r["canonical_solution"] for r in rows], [_he_ref(r) for r in rows]
    )
    failed = [(r["task_id"], v.detail) for r, v in zip(rows, verdicts) if not v.correct]
    assert failed == []
    assert len(rows) == 164


def test_humaneval_full_program_responses_pass(verifier):
    """A model that repeats the prompt and answers in a fenced block is judged the same."""
    rows = _humaneval()
    responses = [
        f"Here you go:\n```python\n{r['prompt']}{r['canonical_solution']}```\n" for r in rows
    ]
    verdicts = verifier.verify_batch(responses, [_he_ref(r) for r in rows])
    assert [(r["task_id"], v.detail) for r, v in zip(rows, verdicts) if not v.correct] == []


def test_humaneval_wrong_bodies_fail(verifier):
    rows = random.Random(0).sample(_humaneval(), 40)
    wrong = ["    return None\n", "    pass\n", "    raise NotImplementedError\n", "    return 0\n"]
    verdicts = verifier.verify_batch(
        [wrong[i % 4] for i in range(len(rows))], [_he_ref(r) for r in rows]
    )
    passed = [r["task_id"] for r, v in zip(rows, verdicts) if v.reward > 0]
    assert passed == []
    assert all(v.status == "incorrect" for v in verdicts)


def test_humaneval_off_by_one_fails_with_expected_and_got(verifier):
    wrong = "def add(a, b):\n    return a + b + 1\n"
    verdict = verifier.verify(wrong, ADD)
    assert verdict.status == "incorrect"
    assert "expected 5, got 6" in verdict.detail and "add(2, 3)" in verdict.detail


def test_mbpp_reference_solutions_pass_sample(verifier):
    rows = [r for r in _mbpp() if r["task_id"] not in MBPP_UNSUPPORTED]
    rows = random.Random(1).sample(rows, 80)
    verdicts = verifier.verify_batch([r["code"] for r in rows], [_mbpp_ref(r) for r in rows])
    assert [(r["task_id"], v.detail) for r, v in zip(rows, verdicts) if not v.correct] == []


@pytest.mark.slow
def test_mbpp_reference_solutions_pass_except_known_broken_rows():
    rows = _mbpp()
    with CodeVerifier(timeout_s=30.0) as verifier:
        verdicts = verifier.verify_batch([r["code"] for r in rows], [_mbpp_ref(r) for r in rows])
    failed = {r["task_id"] for r, v in zip(rows, verdicts) if not v.correct}
    assert failed == set(MBPP_UNSUPPORTED)


@pytest.mark.slow
def test_sanitized_mbpp_reference_solutions_all_pass():
    rows = _rows("mbpp", "sanitized")
    refs = [
        {"test_list": r["test_list"], "test_setup_code": "\n".join(r["test_imports"])} for r in rows
    ]
    with CodeVerifier(timeout_s=30.0) as verifier:
        verdicts = verifier.verify_batch([r["code"] for r in rows], refs)
    assert [(r["task_id"], v.detail) for r, v in zip(rows, verdicts) if not v.correct] == []


def test_mbpp_wrong_solution_fails(verifier):
    row = next(r for r in _mbpp() if r["task_id"] == 2)
    verdict = verifier.verify("def similar_elements(a, b):\n    return ()\n", _mbpp_ref(row))
    assert verdict.status == "incorrect" and "expected" in verdict.detail


def test_mbpp_script_fallback_uses_setup_and_helpers(verifier):
    ref = {
        "test_list": ["assert math.isclose(half(3.0), 1.5)", "assert set(pair(1)) == {1, 2}"],
        "test_setup_code": "import math",
    }
    assert verifier.verify(
        "def half(x):\n    return x / 2\ndef pair(x):\n    return [x, x + 1]\n", ref
    ).correct
    verdict = verifier.verify("def half(x):\n    return x\ndef pair(x):\n    return [x]\n", ref)
    assert verdict.status == "incorrect" and "test 1/2" in verdict.detail


def test_tests_that_never_call_the_submission_cannot_pass(verifier):
    ref = {"entry_point": "f", "test": "def check(candidate):\n    x = 1\n    assert x == 1\n"}
    verdict = verifier.verify("def f():\n    return 1\n", ref)
    assert verdict.status == "error" and "without ever calling" in verdict.detail


def test_truthiness_only_tests_accept_non_primitive_results(verifier):
    """``assert f(x)`` on a ``re.Match`` (sanitized MBPP 737): only ``bool()`` crosses over."""
    ref = {"test_list": ["assert check('annie')", "assert not check('bob')"], "test_setup_code": ""}
    code = "import re\ndef check(s):\n    return re.search('nn', s)\n"
    assert verifier.verify(code, ref).correct
    eq_ref = {"test_list": ["assert check('annie') == 'nn'"], "test_setup_code": ""}
    assert verifier.verify(code, eq_ref).status == "incorrect"


# --- stdio ----------------------------------------------------------------------------------

SUM = {"stdio": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}]}


@pytest.mark.parametrize(
    "program",
    [
        "a, b = map(int, input().split())\nprint(a + b)\n",
        "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b, end='   \\n\\n\\n')\n",
        "import sys\ndata = sys.stdin.buffer.read().split()\nsys.stdout.write(str(int(data[0]) + int(data[1])) + '\\r\\n')\n",
        "import sys\na, b = map(int, open(0).read().split())\nprint(a + b)\nsys.exit(0)\n",
    ],
)
def test_stdio_correct_programs_pass(verifier, program):
    assert verifier.verify(program, SUM).correct


# Programs that end the way CPython ends a script: non-daemon threads joined, atexit handlers
# run, the current sys.stdout flushed (each lost its output before).
ENDINGS = {
    "thread": "import threading\ndef main():\n    a, b = map(int, input().split())\n    print(a + b)\n"
              "threading.stack_size(1 << 26)\nthreading.Thread(target=main).start()\n",
    "atexit": "import atexit\na, b = map(int, input().split())\natexit.register(print, a + b)\n",
    "replaced_stdout": "import io, sys\nsys.stdout = io.TextIOWrapper(open(1, 'wb', closefd=False), write_through=False)\n"
                       "a, b = map(int, input().split())\nprint(a + b)\n",
    "closed_stdout": "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.stdout.close()\n",
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_stdio_programs_end_like_cpython(verifier, ending):
    verdict = verifier.verify(ENDINGS[ending], SUM)
    assert verdict.correct, verdict


@pytest.mark.parametrize(
    "program, status",
    [
        ("a, b = map(int, input().split())\nprint(a - b)\n", "incorrect"),
        ("a, b = map(int, input().split())\nprint(' ' + str(a + b))\n", "incorrect"),
        ("a, b = map(int, input().split())\nprint(a + b)\nprint(0)\n", "incorrect"),
        ("print(3)\nraise ValueError('late')\n", "incorrect"),
        ("import sys\nprint(3)\nsys.exit(1)\n", "incorrect"),
        ("print(3\n", "error"),
        ("while True:\n    pass\n", "timeout"),
    ],
)
def test_stdio_wrong_programs_fail(quick, program, status):
    verdict = quick.verify(program, SUM)
    assert verdict.status == status, verdict
    assert verdict.reward == 0.0


def test_stdio_whitespace_rules():
    assert normalize_output("3  \r\n4\t\n\n\n") == normalize_output("3\n4")
    assert normalize_output(" 3\n") != normalize_output("3\n")
    assert normalize_output("3 4\n") != normalize_output("3  4\n")
    assert normalize_output("3\n\n4\n") != normalize_output("3\n4\n")


def test_stdio_non_utf8_output_is_incorrect_not_a_crash(verifier):
    verdict = verifier.verify("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe3\\n')\n", SUM)
    assert verdict.status == "incorrect"


# --- extraction and assembly --------------------------------------------------------------


def test_extract_code_takes_the_last_python_block():
    text = "Try:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\n```bash\nls\n```\n"
    assert extract_code(text) == "x = 2\n"


def test_extract_code_untagged_and_unclosed_fences():
    assert extract_code("```\nx = 3\n```") == "x = 3\n"
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


def test_extract_code_without_fences_is_the_whole_text():
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("```bash\nls\n```") == "```bash\nls\n```"


code_lines = st.lists(
    st.text(st.characters(blacklist_categories=["Cs", "Zl", "Zp", "Cc"]), max_size=30).filter(
        lambda ln: "`" not in ln
    ),
    min_size=1,
    max_size=6,
)


@given(code_lines, st.sampled_from(["python", "py", "", "Python3"]), st.text(max_size=40))
def test_fencing_code_does_not_change_what_is_judged(lines, tag, prose):
    code = "\n".join(lines) + "\n"
    prose = prose.replace("`", "")
    assert extract_code(f"{prose}\n```{tag}\n{code}```\n{prose}") == code


def test_assemble_joins_an_indented_body_to_the_prompt():
    assert assemble("    return a + b\n", ADD) == ADD["prompt"] + "    return a + b\n"


def test_assemble_indents_an_unindented_body():
    assert assemble("return a + b", ADD).endswith("\n    return a + b\n")


def test_assemble_keeps_a_full_definition_and_adds_prompt_imports():
    code = "def add(a: int, b: int) -> int:\n    return a + b\n"
    assert assemble(code, ADD) == "from typing import List\n" + code


def test_full_definition_gets_the_prompts_helpers(verifier):
    row = next(r for r in _humaneval() if r["entry_point"] == "decode_cyclic")
    code = "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n"
    assembled = assemble(code, _he_ref(row))
    assert "def encode_cyclic" in assembled and assembled.endswith(code)
    assert verifier.verify(code, _he_ref(row)).correct


def test_a_redefined_helper_replaces_the_prompts_copy():
    prompt = 'import math\n\ndef helper():\n    return 1\n\ndef f():\n    """doc"""\n'
    code = "def helper():\n    return 2\n\ndef f():\n    return helper()\n"
    assembled = assemble(code, {"entry_point": "f", "test": "", "prompt": prompt})
    assert assembled == "import math\n" + code


def test_body_only_and_full_definitions_both_pass(verifier):
    assert verifier.verify("    return a + b\n", ADD).correct
    assert verifier.verify("```python\ndef add(a, b):\n    return a + b\n```", ADD).correct
    assert verifier.verify("Sure!\n```python\nreturn a + b\n```\nDone.", ADD).correct


def test_assemble_leaves_mbpp_and_stdio_code_alone():
    assert assemble("x = 1\n", {"test_list": []}) == "x = 1\n"
    assert assemble("x = 1\n", SUM) == "x = 1\n"


def test_bad_reference_raises_a_clear_error(verifier):
    with pytest.raises(ValueError, match="must have 'test'"):
        verifier.verify("x = 1", {"tests": []})
    with pytest.raises(ValueError, match="got \\['tests'\\]"):
        validate_reference({"tests": []})
    with pytest.raises(ValueError, match="got str"):
        validate_reference("assert f(1) == 2")


# --- statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, status, words",
    [
        ("def add(a, b)\n    return a + b\n", "error", "syntax error"),
        ("import numpy_that_does_not_exist\n", "error", "ModuleNotFoundError"),
        ("def add(a, b):\n    while True:\n        pass\n", "timeout", "wall-clock"),
        ("def add(a, b):\n    return bytearray(4 << 30)\n", "error", "memory limit"),
        (
            "import sys\ndef add(a, b):\n    sys.stdout.write('x' * (8 << 20))\n    sys.stdout.flush()\n",
            "error",
            "output cap",
        ),
        ("import ctypes\ndef add(a, b):\n    ctypes.string_at(0)\n", "error", "crash"),
        ("def add(a, b):\n    raise ValueError('nope')\n", "incorrect", "raised ValueError: nope"),
        ("def add(a, b):\n    return {1, 2}\n", "incorrect", "expected 5, got {1, 2}"),
        ("", "no_answer", "no code"),
        ("```python\n```", "no_answer", "no code"),
    ],
)
def test_statuses_are_named_in_detail(quick, code, status, words):
    verdict = quick.verify(code, {k: v for k, v in ADD.items() if k != "prompt"})
    assert verdict.status == status, verdict
    assert words in verdict.detail, verdict
    assert verdict.reward == 0.0


def test_non_string_response_is_no_answer(verifier):
    assert verifier.verify(None, ADD).status == "no_answer"  # type: ignore[arg-type]


def test_verify_batch_keeps_order_and_a_slow_check_does_not_block_others():
    slow = "import time\ndef add(a, b):\n    time.sleep(60)\n"
    good, bad = "    return a + b\n", "    return a - b\n"
    responses = [slow, good, bad, slow, good, bad, good, good]
    with CodeVerifier(timeout_s=1.5, concurrency=3) as verifier:
        start = time.monotonic()
        verdicts = verifier.verify_batch(responses, [ADD] * len(responses))
        elapsed = time.monotonic() - start
    assert [v.status for v in verdicts] == [
        "timeout",
        "correct",
        "incorrect",
        "timeout",
        "correct",
        "incorrect",
        "correct",
        "correct",
    ]
    assert elapsed < 1.5 + 3.0


def test_verify_batch_checks_lengths(verifier):
    with pytest.raises(ValueError, match="one reference per response"):
        verifier.verify_batch(["x"], [])


def test_make_verifier_builds_a_code_verifier():
    verifier = make_verifier("code", timeout_s=3.0)
    assert isinstance(verifier, CodeVerifier) and verifier.timeout_s == 3.0


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_verify_is_total_on_arbitrary_text(verifier, text):
    verdict = verifier.verify(text, ADD)
    assert isinstance(verdict, Verdict) and verdict.status in STATUSES
    assert verdict.reward in (0.0, 1.0)


TRAILERS = {
    "example usage": "Example usage:\n```python\nprint({call})\n```\n",
    "output": "Output:\n```\n{out}\n```\n",
    "tests": "Tests:\n```python\nassert {call} == {out}\n```\n",
    "all three": "```python\nprint({call})\n```\n```\n{out}\n```\n```python\nassert {call} == {out}\n```\n",
}


@pytest.mark.parametrize("trailer", sorted(TRAILERS))
def test_a_solution_followed_by_usage_output_or_tests_blocks_is_judged_by_the_solution(verifier, trailer):
    row = next(r for r in _mbpp() if r["task_id"] == 2)
    solution = f"Here is the code:\n```python\n{row['code']}\n```\n"
    tail = TRAILERS[trailer].format(call="similar_elements((3, 4), (4, 5))", out="(4,)")
    assert verifier.verify(solution + tail, _mbpp_ref(row)).status == "correct"
    full = f"```python\n{ADD['prompt']}    return a + b\n```\n"
    tail = TRAILERS[trailer].format(call="add(2, 3)", out="5")
    assert verifier.verify(full + tail, ADD).status == "correct"
    # a wrong solution stays wrong whatever follows it
    wrong = "```python\ndef similar_elements(a, b):\n    return ()\n```\n"
    assert verifier.verify(wrong + tail, _mbpp_ref(row)).status == "incorrect"
