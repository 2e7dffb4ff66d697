"""benchmarks/device_check.sh in its CPU mode: every part runs, the selfcheck first, one JSON and one
markdown table come out, a failing part is reported while the rest still runs, a run cut short
still leaves its results, and the time limit holds.

The smoke run uses --quick sizes, a few benchmarks (DC_BENCH_FILTER) and one small test file
(DC_TESTS) so that it stays CI-sized; the full CPU mode runs the same parts at larger sizes. The
selfcheck is a stand-in reached through the script's PYTHON (an interpreter that answers
``-m fer_fast selfcheck`` itself and passes everything else to this one), so that these tests
check the script's handling of it, not the selfcheck (tested on its own).
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_check.sh"

ROWS = [{"op": "block", "backend": "fused", "check": "parity fp32", "passed": True,
         "max_error": 3.1e-6, "tolerance": 1e-4, "time_ms": 4.2, "speedup": 1.7},
        {"op": "augment", "backend": "native", "check": "bit-exact", "passed": True,
         "max_error": 0.0, "tolerance": 0.0, "time_ms": 0.8, "speedup": 30.5}]

# The stand-in selfcheck: "pass" prints a table and writes the JSON (with the arguments it got),
# "crash" fails before writing anything, "hang" writes its pid to a marker file and sleeps.
FAKE_SELFCHECK = f"""
import json, os, sys, time
from pathlib import Path
behaviour, args = sys.argv[1], sys.argv[6:]   # after: marker -m fer_fast selfcheck
if behaviour == "crash":
    sys.exit("RuntimeError: CUDA error: an illegal memory access was encountered")
if behaviour == "hang":
    Path(sys.argv[2]).write_text(str(os.getpid()))
    time.sleep(60)
rows = {ROWS!r}
print("op      backend  check        passed")
for row in rows:
    print(row["op"], row["backend"], row["check"], row["passed"])
json_path = args[args.index("--json") + 1]
Path(json_path).write_text(json.dumps({{"device": args[args.index("--device") + 1],
                                        "env": {{"argv": args}}, "rows": rows, "passed": True}}))
"""


def _python_with_selfcheck(tmp_path, behaviour):
    """A PYTHON for the script: this interpreter, except that ``-m fer_fast selfcheck`` runs the
    stand-in with ``behaviour``, and that with FAKE_CUDA set it says that CUDA is available."""
    fake = tmp_path / "fake_selfcheck.py"
    fake.write_text(FAKE_SELFCHECK)
    marker = tmp_path / "selfcheck_started"
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ -n "${FAKE_CUDA:-}" ] && [ "$1" = -c ]; then\n'
        '  case "$2" in *cuda.is_available*) exit 0 ;; esac\n'
        "fi\n"
        'if [ "$1" = -m ] && [ "$2" = fer_fast ] && [ "$3" = selfcheck ]; then\n'
        f'  exec "{sys.executable}" "{fake}" {behaviour} "{marker}" "$@"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python, marker


def _env(tmp_path, behaviour="pass", **extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # TMPDIR: the script's work folder too stays in tmp_path (a killed run cannot remove it)
    env.update(PYTHON=str(_python_with_selfcheck(tmp_path, behaviour)[0]),
               OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path), **extra)
    return env


def _run(tmp_path, *args, behaviour="pass", **extra):
    """The script with ``args`` (``--cpu`` unless FAKE_CUDA is given) and its $OUT."""
    mode = [] if "FAKE_CUDA" in extra else ["--cpu"]
    proc = subprocess.run(["bash", str(SCRIPT), *mode, *args], cwd=ROOT,
                          env=_env(tmp_path, behaviour, **extra), capture_output=True, text=True,
                          timeout=600)
    return proc, tmp_path / "out"


def _result(out):
    result = json.loads((out / "device_check.json").read_text())
    md = (out / "device_check.md").read_text()
    return result, md


def _log_of(out, parts):
    """The sections of device_check.log that belong to ``parts`` (for a failure's message)."""
    sections = (out / "device_check.log").read_text().split("=== ")
    return "=== ".join(s for s in sections if s.split(" ", 1)[0].rstrip(":") in parts)[-6000:]


def test_cpu_smoke_run_produces_json_and_table(tmp_path):
    proc, out = _run(tmp_path, "--quick", "--parts",
                     "env,selfcheck,tests,bench,train,scaling,bench_compile",
                     DC_TESTS="tests/test_report.py::test_flops_match_spec_figures",
                     DC_BENCH_FILTER="t1 or 4b or eager+eager")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, md = _result(out)
    assert result["mode"] == "cpu" and result["quick"] is True
    assert result["env"]["torch"] and result["env"]["cpu_count"] >= 1
    names = [p["name"] for p in result["parts"]]
    assert names.index("selfcheck") < names.index("tests") < names.index("bench_step")
    status = {p["name"]: p["status"] for p in result["parts"]}
    assert status.pop("install") == "skipped"
    assert set(status) >= {"env", "selfcheck", "tests", "bench_step", "bench_augment", "bench_block",
                           "bench_conv", "train-configs", "train-reference", "scaling",
                           "bench_compile"}
    failed = {name: s for name, s in status.items() if s != "ok"}
    assert not failed, f"{failed}\n{_log_of(out, failed)}"
    # the selfcheck: asked for the CPU at quick sizes, its JSON and printed table kept in $OUT
    check = result["selfcheck"]
    assert check["env"]["argv"] == ["--device", "cpu", "--quick", "--json", str(out / "selfcheck.json")]
    assert check["rows"] == ROWS and json.loads((out / "selfcheck.json").read_text()) == check
    assert "augment native bit-exact True" in (out / "selfcheck.txt").read_text()
    assert "**Selfcheck** on `cpu`: every backend passed" in md
    assert "| augment | native | bit-exact | pass | 0 | 0 | 0.8 | 30.5 |" in md
    assert result["tests"] == {"passed": 1, "failed": 0, "errors": 0, "skipped": 0}
    # data-parallel scaling: torchrun with 1 and 2 CPU processes (gloo)
    assert [r["processes"] for r in result["scaling"]["rows"]] == [1, 2]
    assert all(r["images_per_s"] > 0 for r in result["scaling"]["rows"])
    assert "**Data-parallel scaling** (torchrun, cpu," in md
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
    assert "**Training step" in md and "`eager+eager`" in md and "| reference |" in md
    # the tables, then the headline numbers, are what the output ends with
    tail = proc.stdout[proc.stdout.rindex(md.splitlines()[0]):]
    assert tail.startswith(md) and "\nHeadlines:\n- selfcheck: 2 of 2 checks passed\n" in tail
    assert tail.rstrip().splitlines()[-1].startswith("- ")
    assert (out / "device_check.log").stat().st_size > 0


def test_a_failing_part_is_reported_and_the_rest_runs(tmp_path):
    proc, out = _run(tmp_path, "--quick", "--parts", "selfcheck,tests", behaviour="crash",
                     DC_TESTS="tests/no_such_test_file.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, md = _result(out)
    status = {p["name"]: p["status"] for p in result["parts"]}
    assert {k: v for k, v in status.items() if v != "skipped"} == {"selfcheck": "failed",
                                                                    "tests": "failed"}
    assert result["selfcheck"] is None and not (out / "selfcheck.json").exists()
    assert "illegal memory access" in (out / "selfcheck.txt").read_text()
    assert "| selfcheck | failed |" in md and "illegal memory access" in md
    assert "| tests | failed |" in md


def test_on_a_gpu_the_selfcheck_runs_on_cuda_at_full_size(tmp_path):
    proc, out = _run(tmp_path, "--parts", "selfcheck", FAKE_CUDA="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, md = _result(out)
    assert result["mode"] == "gpu" and result["quick"] is False
    part = next(p for p in result["parts"] if p["name"] == "selfcheck")
    assert part["status"] == "ok" and part["limit_s"] > 60
    assert result["selfcheck"]["env"]["argv"] == ["--device", "cuda", "--json",
                                                  str(out / "selfcheck.json")]
    assert "**Selfcheck** on `cuda`: every backend passed" in md


def test_scaling_is_skipped_with_its_reason_on_a_machine_with_one_gpu(tmp_path):
    proc, out = _run(tmp_path, "--parts", "scaling", FAKE_CUDA="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, md = _result(out)
    part = next(p for p in result["parts"] if p["name"] == "scaling")
    assert part["status"] == "skipped" and result["scaling"] is None
    assert "data-parallel scaling needs 2 or more" in part["tail"][-1]
    assert "| scaling | skipped | 0 s / 0 s | skipped: 0 GPU(s) here; data-parallel scaling" in md


def test_a_run_cut_short_leaves_the_parts_it_finished(tmp_path):
    proc = subprocess.Popen(["bash", str(SCRIPT), "--cpu", "--quick", "--parts", "env,selfcheck"],
                            cwd=ROOT, env=_env(tmp_path, "hang"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = tmp_path / "selfcheck_started"
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the selfcheck part never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as when the machine's time runs out
        proc.wait()
        if marker.exists():  # `timeout` runs the part in a process group of its own
            os.kill(int(marker.read_text()), signal.SIGKILL)
    result, md = _result(tmp_path / "out")
    assert [p["name"] for p in result["parts"]] == ["env"]  # finished, the selfcheck never did
    assert "| env |" in md and "| selfcheck |" not in md


def test_parts_beyond_the_time_limit_are_reported(tmp_path):
    proc, out = _run(tmp_path, "--quick", "--parts", "env", DC_TOTAL_S="10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, _ = _result(out)
    assert [(p["name"], p["status"]) for p in result["parts"]][0] == ("env", "no time left")


def test_unknown_part_is_refused(tmp_path):
    proc, out = _run(tmp_path, "--parts", "env,benchmark")
    assert proc.returncode == 2 and "unknown part 'benchmark'" in proc.stderr
