"""The selfcheck and the verdict "auto" decides by, on the CPU: fake verdict files (passed,
failed, faster, slower) for a CUDA device and what "auto" then takes, a backend broken on
purpose (the selfcheck fails it, exits 1, "auto" skips it, naming it still runs it with a
warning), a selfcheck child that aborts (recorded as every fast backend failed), the
disabled mode, and the CLI's table and JSON at reduced sizes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import in_fresh_process
from fer_fast import VGG, backends, selfcheck, verdict
from fer_fast.block import conv_bn_act_ref
from fer_fast.stack import resolve_model_backend

CUDA = torch.device("cuda")


@pytest.fixture
def cache(verdict_cache, monkeypatch):
    """An empty verdict directory, and a fake CUDA device whose environment is fixed."""
    monkeypatch.setattr(verdict, "_cuda_usable", lambda: True)
    real_env = verdict.environment

    def fake_env(device):
        if torch.device(device).type == "cuda":
            return {"device_type": "cuda", "gpu_name": "Test GPU", "capability": "9.0",
                    "driver": "1.0", "torch": torch.__version__, "triton": "x",
                    "fer_fast": "0.1.0", "kernel_source_sha256": verdict.source_hash()}
        return real_env(device)

    monkeypatch.setattr(verdict, "environment", fake_env)
    return verdict_cache


@pytest.fixture
def fake_cuda_backends(monkeypatch):
    """Every fast backend "runs" on the fake CUDA device (nothing is launched here)."""
    for op, names in (("augment", ("native", "triton")), ("block", ("fused",)),
                      ("stack", ("triton",))):
        for name in names:
            b = backends._REGISTRY[op][name]
            on_cuda = lambda d: torch.device(d).type == "cuda"  # noqa: E731
            monkeypatch.setitem(backends._REGISTRY[op], name, backends._Backend(
                b.fn, lambda d, b=b: on_cuda(d) or b.supports(d), b.priority,
                lambda d, b=b: on_cuda(d) or b.auto(d)))


def _time(op, name, ms):
    return {"op": op, "backend": name, "check": "time", "passed": True, "time_ms": ms}


def _parity(op, name, passed, check="forward fp16"):
    return {"op": op, "backend": name, "check": check, "passed": passed}


def _write(rows):
    result = {"device": "cuda", "env": verdict.environment(CUDA), "rows": rows,
              "passed": all(r["passed"] for r in rows)}
    return verdict.save(CUDA, result)


def test_verdict_location_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FER_FAST_VERDICT_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert verdict.verdict_dir() == tmp_path / "xdg" / "fer_fast"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert verdict.verdict_dir() == tmp_path / "home" / ".cache" / "fer_fast"
    monkeypatch.setenv("FER_FAST_VERDICT_DIR", str(tmp_path / "v"))
    assert verdict.verdict_dir() == tmp_path / "v"


def test_key_changes_with_the_software(cache):
    env = verdict.environment(CUDA)
    path = verdict.verdict_path(CUDA, env)
    assert path.parent == cache and path.name.startswith("verdict-cuda-")
    assert verdict.verdict_path(CUDA, {**env, "triton": "y"}) != path
    assert verdict.verdict_path(CUDA, {**env, "kernel_source_sha256": "0" * 64}) != path


def test_key_covers_the_kernel_sources_as_imported():
    """Every module of ``fer_fast.kernels`` is hashed from the file it was imported from (in an
    editable install: ``kernels/`` of the checkout, mapped by package_dir)."""
    import pkgutil
    import fer_fast.augmentation
    import fer_fast.kernels
    files = set(verdict.source_files())
    for info in pkgutil.iter_modules(fer_fast.kernels.__path__):
        module = __import__(f"fer_fast.kernels.{info.name}", fromlist=["_"])
        assert Path(module.__file__).resolve() in files, info.name
    assert Path(fer_fast.augmentation._C.__file__).resolve() in files


def test_editing_a_kernel_changes_the_key(cache, tmp_path, monkeypatch):
    """A kernel source edited after a verdict was stored: a new key, so the old verdict (which
    judged the old code) is not read."""
    import shutil
    from fer_fast.kernels import conv
    copy = tmp_path / "conv.py"
    shutil.copy(conv.__file__, copy)
    monkeypatch.setattr(conv, "__file__", str(copy))
    before = verdict.verdict_path("cpu")
    assert verdict.verdict_path("cpu") == before
    copy.write_text(copy.read_text() + "\n# edited\n")
    assert verdict.verdict_path("cpu") != before


def test_auto_takes_the_fastest_that_passed(cache, fake_cuda_backends):
    _write([_parity("augment", "triton", True), _parity("augment", "native", True),
            _time("augment", "eager", 10.0), _time("augment", "triton", 2.0),
            _time("augment", "native", 1.0),
            _parity("block", "fused", True), _time("block", "eager", 10.0),
            _time("block", "fused", 5.0), _parity("stack", "triton", True),
            _time("stack", "triton", 4.0)])
    assert backends.auto_choice("augment", CUDA) == "native"  # faster, despite lower priority
    assert resolve_model_backend("auto", CUDA) == "triton"  # the whole stack beats the fused blocks


def test_a_slower_whole_stack_backend_is_not_taken(cache, fake_cuda_backends):
    _write([_parity("block", "fused", True), _time("block", "eager", 10.0),
            _time("block", "fused", 5.0), _parity("stack", "triton", True),
            _time("stack", "triton", 6.0)])
    assert resolve_model_backend("auto", CUDA) == "fused"


def test_a_failed_backend_is_never_taken_but_runs_by_name_with_a_warning(cache,
                                                                         fake_cuda_backends):
    _write([_parity("augment", "triton", False, "parity fp16"), _parity("augment", "native", True),
            _time("augment", "eager", 10.0), _time("augment", "native", 5.0),
            _parity("block", "fused", False, "gradients fp16"), _time("block", "eager", 10.0),
            _parity("stack", "triton", True), _time("stack", "triton", 20.0)])
    assert backends.auto_choice("augment", CUDA) == "native"
    assert resolve_model_backend("auto", CUDA) == "eager"  # fused failed, triton slower than eager
    with pytest.warns(RuntimeWarning, match=r"'fused'.*FAILED.*gradients fp16"):
        backends.resolve("block", "fused", CUDA)


def test_no_verdict_on_cuda_means_the_eager_reference(cache, fake_cuda_backends):
    with pytest.warns(RuntimeWarning, match="no selfcheck verdict"):
        assert resolve_model_backend("auto", CUDA) == "eager"
    assert backends.auto_choice("augment", CUDA) == "eager"


def test_disabled_means_eager_on_cuda_and_todays_choices_on_cpu(cache, fake_cuda_backends,
                                                                 monkeypatch):
    _write([_parity("block", "fused", True), _time("block", "eager", 10.0),
            _time("block", "fused", 5.0)])
    monkeypatch.setenv("FER_FAST_SELFCHECK", "off")
    with pytest.warns(RuntimeWarning, match="FER_FAST_SELFCHECK=off"):
        assert resolve_model_backend("auto", CUDA) == "eager"
    assert backends.auto_choice("augment", "cpu") == "native"
    record = verdict.prepare_auto(CUDA, needed=True)
    assert record["verdict"] is None and "disables" in record["selfcheck"]


@in_fresh_process
def test_auto_under_torch_compile_fullgraph_as_the_first_call(cache):
    """The verdict is read while resolving "auto", outside the traced forward: a compiled
    ``VGG(backend="auto")`` works as the process's first call with a verdict file to read."""
    verdict.save("cpu", {"device": "cpu", "env": verdict.environment("cpu"), "passed": True,
                         "rows": [_parity("augment", "native", True)]})
    torch.manual_seed(0)
    model, twin = VGG(width=1 / 32, dropout=0.0, backend="auto"), VGG(width=1 / 32, dropout=0.0)
    twin.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 40, 40)
    got = torch.compile(model, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(got, twin(x), rtol=0, atol=0)


def test_backend_choices_are_constants_to_torch_compile_as_torchs_decorator_marks_them():
    """backends.constant_result marks a function as torch.compiler.assume_constant_result does
    (without importing torch._dynamo), and marks the two functions that resolve "auto"."""
    def marked_by_torch():
        pass

    def marked_here():
        pass

    torch.compiler.assume_constant_result(marked_by_torch)
    backends.constant_result(marked_here)
    assert vars(marked_here) == vars(marked_by_torch) != {}
    for fn in (backends.choose, resolve_model_backend):
        assert {k: v for k, v in vars(fn).items() if k in vars(marked_by_torch)} == \
            vars(marked_by_torch)


def test_cpu_without_a_verdict_keeps_the_registry_choices(cache):
    assert backends.auto_choice("augment", "cpu") == "native"
    assert resolve_model_backend("auto", "cpu") == "eager"


def _broken_block(x, weight, bias, *args, **kwargs):
    """The eager block, off by 1 % of its output: must fail parity."""
    return conv_bn_act_ref(x, weight, bias, *args, **kwargs) * 1.01


def test_a_broken_backend_fails_the_selfcheck_and_auto_skips_it(cache, monkeypatch, capsys):
    monkeypatch.setitem(backends._REGISTRY["block"], "broken", backends._Backend(
        _broken_block, lambda d: True, 50, lambda d: True))
    out = cache / "sc.json"
    code = selfcheck.main(["--device", "cpu", "--op", "block", "--backend", "broken",
                           "--json", str(out)])
    assert code == 1
    result = json.loads(out.read_text())
    rows = {r["check"]: r for r in result["rows"] if r["backend"] == "broken"}
    assert not rows["forward fp32"]["passed"] and rows["forward fp32"]["max_error"] > 0
    assert not result["passed"]
    assert "FAILED" in capsys.readouterr().out
    assert backends.auto_choice("block", "cpu") == "broken"  # priority, before any verdict
    verdict.save("cpu", result)
    assert backends.auto_choice("block", "cpu") == "eager"


def _run_child(env_extra, cache):
    env = dict(os.environ, FER_FAST_VERDICT_DIR=str(cache), **env_extra)
    code = ("import torch, fer_fast; from fer_fast import verdict;"
            "v, note = verdict.ensure_verdict('cpu', timeout=120); print(note);"
            "print(fer_fast.stack.resolve_model_backend('auto', 'cpu'),"
            " fer_fast.backends.auto_choice('augment', 'cpu'))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_faulting_selfcheck_child_is_recorded_as_failed(cache):
    out = _run_child({"FER_FAST_SELFCHECK_TEST_ABORT": "1"}, cache)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SIGABRT" in out.stdout
    assert out.stdout.split()[-2:] == ["eager", "eager"]  # the native kernel failed: eager
    (path,) = cache.glob("verdict-cpu-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert rows and all(not r["passed"] and "SIGABRT" in r["detail"] for r in rows)
    assert {(r["op"], r["backend"]) for r in rows} >= {("augment", "native")}
    _, note = verdict.ensure_verdict("cpu")
    assert "(cached)" in note  # recorded: not run again


def test_training_proceeds_on_safe_backends_after_a_faulting_child(cache, tmp_path):
    """The verdict an aborted child leaves (every fast backend failed): the trainer runs on
    the eager backends and config.json records the verdict, what happened and why."""
    from fer_fast import train
    verdict.save("cpu", verdict._failure_verdict(torch.device("cpu"), "killed by SIGABRT"))
    config, _ = train.parse_args(["--epochs", "1", "--out", str(tmp_path / "run"),
                                  "--synthetic-sizes", "20,10,10", "--width", "0.0625"])
    train.train(config)
    auto = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["auto"]
    assert auto["auto_augment_backend"] == "eager" and auto["auto_model_backend"] == "eager"
    assert "native" in auto["failed"]["augment"]
    assert auto["verdict"].startswith(str(cache))


def test_cli_prints_the_table_and_writes_json(cache, tmp_path, capsys):
    out = tmp_path / "sc.json"
    code = selfcheck.main(["--device", "cpu", "--op", "augment", "--backend", "native",
                           "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["passed"] and result["device"] == "cpu"
    assert set(result["env"]) >= {"torch", "triton", "fer_fast", "kernel_source_sha256"}
    checks = {(r["backend"], r["check"]) for r in result["rows"]}
    assert {("native", "parity fp32"), ("native", "parity fp16"), ("eager", "time"),
            ("native", "time")} <= checks
    for r in result["rows"]:
        assert set(r) >= {"op", "backend", "check", "passed", "max_error", "tolerance",
                          "margin", "worst", "time_ms", "speedup"}
    assert not list(cache.glob("verdict-*.json"))  # a partial run is not stored
    printed = capsys.readouterr()
    assert "parity fp32" not in printed.err  # the table is printed once, on stdout
    header, *lines = printed.out.splitlines()
    assert header.split() == ["op", "backend", "check", "result", "error", "tolerance", "margin",
                              "time", "ms", "speed-up"]
    (row,) = [ln for ln in lines if "native" in ln and "parity fp32" in ln]
    tol = next(r for r in result["rows"] if r["check"] == "parity fp32")["tolerance"]
    assert f"{tol:.1e}" in row.split()  # numeric, with the margin beside it
    assert any(ln.startswith("auto augment: ") for ln in lines)  # the decision, one line


def test_interpreter_numpy_constraint_is_named(monkeypatch):
    import numpy
    import triton
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.1")
    assert "numpy<2.4 with triton<3.7" in selfcheck.interpreter_conflict()
    monkeypatch.setattr(numpy, "__version__", "2.3.5")
    assert selfcheck.interpreter_conflict() is None
    monkeypatch.setattr(triton, "__version__", "3.9.0")
    monkeypatch.setattr(numpy, "__version__", "2.5.0")
    assert selfcheck.interpreter_conflict() is None


def test_an_unknown_backend_is_a_user_error(capsys):
    for backend in ("bogus", "fused"):  # fused: a backend, but not of the augmentation
        argv = ["--op", "augment", "--backend", backend]
        assert selfcheck.main(["--device", "cpu", *argv]) == 2
        assert capsys.readouterr().err.startswith("error: --backend")


def test_a_selfcheck_of_zero_checks_fails():
    result = selfcheck.run("cpu", ops=("augment",), only_backends={"none of them"})
    assert result["checks"] == 0 and not result["passed"]
    assert "no check ran" in selfcheck.format_footer(result)


@pytest.mark.parametrize("value", ["-1", "0", "abc", "nan", "inf"])
def test_a_bad_selfcheck_timeout_is_a_user_error(cache, monkeypatch, value):
    from fer_fast.cli import UserError
    monkeypatch.setenv("FER_FAST_SELFCHECK_TIMEOUT", value)
    with pytest.raises(UserError, match="FER_FAST_SELFCHECK_TIMEOUT"):
        verdict.ensure_verdict("cpu")
    monkeypatch.setenv("FER_FAST_SELFCHECK_TIMEOUT", "30")
    assert verdict.selfcheck_timeout() == 30.0


@pytest.mark.parametrize("content", [
    [], None, {"rows": [{"op": "block"}]}, {"rows": "all passed"},
    {"rows": [{"op": "block", "backend": "fused", "check": "forward fp16", "passed": "false"}]},
    {"rows": [{"op": "block", "backend": "fused", "check": "time", "passed": True,
               "time_ms": "1"}]}])
def test_a_malformed_verdict_counts_as_absent_and_is_recomputed(cache, fake_cuda_backends,
                                                                 monkeypatch, capsys, content):
    path = verdict.verdict_path(CUDA)
    path.write_text(json.dumps(content))
    assert verdict.load(CUDA) is None and verdict.load(CUDA) is None
    assert capsys.readouterr().err.count("ignoring the selfcheck verdict") == 1  # said once
    with pytest.warns(RuntimeWarning, match="no selfcheck verdict"):
        assert resolve_model_backend("auto", CUDA) == "eager"
    fresh = {"device": "cuda", "env": verdict.environment(CUDA), "passed": True,
             "rows": [_parity("block", "fused", True), _time("block", "eager", 2.0),
                      _time("block", "fused", 1.0)]}

    def fake_child(cmd, **kwargs):  # the selfcheck child, recomputing
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(fresh))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(verdict.subprocess, "run", fake_child)
    record, note = verdict.ensure_verdict(CUDA)
    assert "ran the selfcheck" in note and verdict.passed_backends(record, "block") == {"fused"}


def _precision_rows(passed=True, fp32_ms=10.0, bf16_ms=5.0):
    return [_parity("precision", "bf16", passed, "train 2 steps vs fp32"),
            _time("precision", "fp32", fp32_ms), _time("precision", "bf16", bf16_ms)]


@pytest.mark.parametrize("rows, native, want", [
    (None, True, None), (_precision_rows(), True, "bf16"),
    (_precision_rows(bf16_ms=20.0), True, "fp32"), (_precision_rows(passed=False), True, "fp32"),
    ([_parity("augment", "native", True)], True, None), (_precision_rows(), False, "bf16")])
def test_cpu_precision_auto_is_bf16_only_where_verified_and_faster(cache, monkeypatch, rows,
                                                                    native, want):
    """``--precision auto`` on a CPU: bf16 only where the CPU has native bf16 and the verdict
    has the bf16 training path passing and faster than fp32 here; fp32 otherwise."""
    from fer_fast import devices, step
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    if rows is not None:
        verdict.save("cpu", {"device": "cpu", "env": verdict.environment("cpu"), "rows": rows,
                             "passed": all(r["passed"] for r in rows)})
    assert verdict.cpu_precision() == want
    expected = "bf16" if native and want == "bf16" else "fp32"
    assert step.resolve_precision("auto", torch.device("cpu")) == expected
    assert step.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    if rows is not None and want:
        (line,) = [ln for ln in verdict.decisions({"rows": rows}, "cpu") if "precision" in ln]
        assert line.startswith(f"auto precision (CPU training): {want}")


def test_a_check_that_cannot_fail_fails():
    """A row passes only where something was compared within a tolerance that an all-zero
    result would not meet; NaN and a 1e-3 relative change in fp32 fail."""
    want = torch.linspace(-1, 1, 50)

    def row(*pairs):
        cmp = selfcheck._Compare()
        for got, tol in pairs:
            cmp.add(got, want, tol, "t")
        return cmp.row("op", "b", "c")

    assert row((want + 1e-7, 1e-5))["passed"]
    assert not row()["passed"] and "nothing compared" in row()["detail"]
    assert not row((want, 1e-5), (want, 1.0))["passed"]  # one vacuous tolerance is enough
    assert "vacuous" in row((want, 1.0))["detail"]
    assert not row((want * 1.001, 1e-5))["passed"]
    assert not row((want.clone().fill_(float("nan")), 1e-5))["passed"]
    bad = row((want, 1e-5), (torch.zeros(50), 0.5))
    assert not bad["passed"] and bad["worst"] == "t" and bad["margin"] == 2.0


def test_cpu_training_takes_the_verified_fast_path(cache, monkeypatch, tmp_path, capsys):
    """End to end on a CPU: with a verdict that passed the native blocks and bf16 (and measured
    them faster), a training run with the defaults takes them; with one where they failed it
    keeps the eager fp32 reference; without a verdict it runs the selfcheck child first."""
    from fer_fast import devices, train
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    tiny = ["--width", "0.0625", "--batch-size", "16", "--epochs", "1", "--no-progress",
            "--device", "cpu", "--synthetic-sizes", "32,16,16"]

    def run(name):
        config, resume = train.parse_args(tiny + ["--out", str(tmp_path / name)])
        train.train(config, resume)
        resolved = json.loads((tmp_path / name / "config.json").read_text())["resolved"]
        return resolved["model_backend"], resolved["precision"]

    def verdict_with(passed):
        rows = [_parity("block", "native", passed, "forward fp32"), _time("block", "eager", 2.0),
                _time("block", "native", 1.0), *_precision_rows(passed=passed)]
        verdict.save("cpu", {"device": "cpu", "env": verdict.environment("cpu"), "rows": rows,
                             "passed": passed})
        verdict._cache.clear()

    verdict_with(True)
    assert run("verified") == ("native", "bf16")
    verdict_with(False)
    assert run("refused") == ("eager", "fp32")
    verdict.verdict_path("cpu").unlink()
    verdict._cache.clear()
    children = []

    def fake_child(cmd, **kwargs):  # the selfcheck child: record that it ran, pass everything
        children.append(cmd)
        rows = [_parity("block", "native", True, "forward fp32"), _time("block", "eager", 2.0),
                _time("block", "native", 1.0), *_precision_rows()]
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(
            {"device": "cpu", "env": verdict.environment("cpu"), "rows": rows, "passed": True}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(verdict.subprocess, "run", fake_child)
    assert run("first") == ("native", "bf16")
    assert len(children) == 1 and "ran the selfcheck for cpu" in capsys.readouterr().out
