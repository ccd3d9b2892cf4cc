"""The README's snippets work when pasted into fresh files outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def run(argv, cwd):
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def test_registration_example_works_from_a_fresh_folder(tmp_path):
    assert not str(tmp_path).startswith(str(README.parent))
    snippet = next(b for b in python_blocks("Registering an env") if b.startswith("# my_quiz.py"))
    (tmp_path / "my_quiz.py").write_text(snippet)
    code = ("import gymnasium as gym, my_quiz\n"
            "env = gym.make('my_quiz/Quiz-v0', tokenizer='char')\n"
            "obs, info = env.reset(options={'task_index': 0})\n"
            "ids = env.unwrapped.tokenizer.encode('\\\\boxed{4}') + [env.unwrapped.eos_token_id]\n"
            "done, total = False, 0.0\n"
            "while not done:\n"
            "    block, ids = ids[:8], ids[8:]\n"
            "    obs, reward, term, trunc, info = env.step(block)\n"
            "    total, done = total + reward, term or trunc\n"
            "print(info['verdict'].status, round(total, 6), int(obs['response_length']),\n"
            "      gym.spec('my_quiz/Quiz-v0').to_json() is not None)\n")
    out = run([sys.executable, "-c", code], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    status, total, length, jsonable = out.stdout.split()
    assert (status, jsonable) == ("correct", "True")
    assert float(total) == round(1.0 - 0.001 * int(length), 6) and int(length) > 0  # the wrapper's reward
    out = run([sys.executable, "-m", "mpo_gym", "check", "my_quiz/Quiz-v0", "--import", "my_quiz",
               "--tokenizer", "char"], tmp_path)
    assert out.returncode == 0 and "passed" in out.stdout, out.stderr[-2000:]
    out = run([sys.executable, "-m", "mpo_gym", "train", "--import", "my_quiz", "--env", "my_quiz/Quiz-v0",
               "--agent", "grpo", "--group-size", "2", "--num-envs", "2", "--minibatch-size", "2",
               "--micro-batch-size", "2", "--updates", "1", "--model", "tiny", "--dtype", "float32",
               "--eval-tasks", "1", "--out-dir", "run"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 updates" in out.stdout
