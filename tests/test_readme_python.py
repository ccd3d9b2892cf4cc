"""The README's "Python" section runs, block after block, as one script in a fresh folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_section_blocks() -> list[str]:
    text = README.read_text()
    start = text.index("## Python\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_python_section_runs_end_to_end_from_a_fresh_folder(tmp_path):
    assert not str(tmp_path).startswith(str(README.parent))
    blocks = python_section_blocks()
    assert len(blocks) == 5  # env + rollout, verify, train, evaluate, load a run
    (tmp_path / "readme_python.py").write_text("\n".join(blocks))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "readme_python.py"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()

    assert lines[0].startswith("TokenBlock(") and "'prompt_ids'" in lines[0]
    rollout_lines = lines[1:5]  # one line per env, in env order
    assert [line.split()[0] for line in rollout_lines] == [f"arithmetic/test/{i}" for i in range(4)]
    assert all(int(line.split()[-1]) > 0 for line in rollout_lines)  # response tokens
    assert "status='correct'" in lines[5] and "status='correct'" in lines[6]  # math, then code
    assert lines[7].startswith("2 updates; held-out accuracy ")

    run = tmp_path / "runs" / "grpo-tiny"  # the run folder lies under the script's folder
    assert json.loads((run / "config.json").read_text())["agent"] == "grpo"
    rows = [json.loads(row) for row in (run / "metrics.jsonl").read_text().splitlines() if row.strip()]
    assert len(rows) == 2
    assert (run / "checkpoint").is_dir()

    assert lines[8].startswith("gsm8k 2 {1: ")  # the suite, its tasks, pass@1
    assert lines[9] == "grpo 2 float32"  # load_run: agent, step, resolved dtype
    assert lines[10].startswith("mpo_gym/Arithmetic-v0 {1: ")
    assert len(lines) == 11
