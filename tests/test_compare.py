"""``mpo-gym compare`` end to end on a tiny model and the toy env."""

from __future__ import annotations

import json
import subprocess
import sys
import time


def test_compare_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mpo_gym", "compare", "--preset", "tiny", "--seeds", "0,1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - start < 120
    report = (out / "report.md").read_text()
    for section in ("## Held-out greedy accuracy before and after", "## MPO diagnostics", "## Cost", "## Reproduce", "curves.png"):
        assert section in report
    for agent in ("ppo", "mpo", "grpo"):
        assert f"| {agent} | 0 |" in report and f"| {agent} | 1 |" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["agent"], r["seed"]) for r in rows} == {(a, s) for a in ("ppo", "mpo", "grpo") for s in (0, 1)}
    assert any("mpo/clipfrac_united" in r for r in rows if r["agent"] == "mpo")
    assert "report:" in proc.stdout

    # resume: a finished comparison is kept as is and the report rewritten
    again = subprocess.run(
        [sys.executable, "-m", "mpo_gym", "compare", "--resume", str(out)], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, kept") == 6
