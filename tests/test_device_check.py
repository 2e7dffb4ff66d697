"""benchmarks/device_check.sh in its CPU mode: every part runs, one JSON and one markdown table
come out, a failing part is reported while the rest still runs, and the time limit holds.

The smoke run uses --quick sizes, a few benchmarks (DC_BENCH_FILTER) and one small test file
(DC_TESTS) so that it stays CI-sized; the full CPU mode runs the same parts at larger sizes.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def _run(tmp_path, *args, **env):
    out = tmp_path / "out"
    full_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full_env.update(PYTHON=sys.executable, OUT=str(out), **env)
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)
    return proc, out


def _result(out):
    result = json.loads((out / "device_check.json").read_text())
    md = (out / "device_check.md").read_text()
    return result, md


def test_cpu_smoke_run_produces_json_and_table(tmp_path):
    proc, out = _run(tmp_path, "--quick", "--parts", "env,tests,bench,train,bench_compile",
                     DC_TESTS="tests/test_report.py::test_flops_match_spec_figures",
                     DC_BENCH_FILTER="t1 or 4b or eager+eager")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, md = _result(out)
    assert result["mode"] == "cpu" and result["quick"] is True
    assert result["env"]["torch"] and result["env"]["cpu_count"] >= 1
    status = {p["name"]: p["status"] for p in result["parts"]}
    assert status.pop("install") == "skipped"
    assert set(status) >= {"env", "tests", "bench_step", "bench_augment", "bench_block",
                           "bench_conv", "train-configs", "train-reference", "bench_compile"}
    assert all(s == "ok" for s in status.values()), result["parts"]
    assert result["tests"] == {"passed": 1, "failed": 0, "errors": 0, "skipped": 0}
    assert result["matmul_peak"]["flops_per_s"] > 0
    groups = {b["group"] for b in result["benchmarks"]}
    assert {"augment", "block-4b", "conv-4b-fwd", "conv-4b-wgrad", "train-step"} <= groups
    for b in result["benchmarks"]:
        assert b["median_s"] > 0 and b["rounds"] >= 1
    step = next(b for b in result["benchmarks"] if b.get("provider") == "eager+eager")
    assert step["images_per_s"] == pytest.approx(step["items_per_call"] / step["median_s"])
    assert 0 < step["roofline_frac"]
    assert any("compile" in name for name in result["skipped_benchmarks"])  # with its reason
    runs = {r["name"]: r for r in result["training"]}
    assert "reference" in runs and len(runs) >= 2  # the reference beside each fast backend
    for run in runs.values():
        assert len(run["epochs"]) == 1 and math.isfinite(run["epochs"][0]["train_loss"])
    assert "**Training step**" in md and "`eager+eager`" in md and "reference" in md
    assert proc.stdout.rstrip().endswith(md.rstrip().splitlines()[-1])  # the table is printed last
    assert (out / "device_check.log").stat().st_size > 0
    raw = json.loads((out / "benchmarks_raw.json").read_text())
    assert {"bench_step", "bench_augment", "bench_block", "bench_conv"} <= set(raw)


def test_a_failing_part_is_reported_and_the_rest_runs(tmp_path):
    proc, out = _run(tmp_path, "--quick", "--parts", "env,tests",
                     DC_TESTS="tests/no_such_test_file.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, md = _result(out)
    status = {p["name"]: p["status"] for p in result["parts"]}
    assert status["tests"] == "failed" and status["env"] == "ok"
    assert "| tests | failed |" in md


def test_parts_beyond_the_time_limit_are_reported(tmp_path):
    proc, out = _run(tmp_path, "--quick", "--parts", "env", DC_TOTAL_S="10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, _ = _result(out)
    assert [(p["name"], p["status"]) for p in result["parts"]][0] == ("env", "no time left")


def test_unknown_part_is_refused(tmp_path):
    proc, out = _run(tmp_path, "--parts", "env,benchmark")
    assert proc.returncode == 2 and "unknown part 'benchmark'" in proc.stderr
