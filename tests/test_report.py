"""benchmarks/report.py and the FLOP counts of benchmarks/harness.py.

The FLOP count is checked against torch's FlopCounterMode on a real forward pass; the report against device-check
work folders and results written here (a temporary README, never the repository's), and the committed results
against their JSON.
"""
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fer_fast import VGG

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # harness imports its siblings by plain name
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = _load("report")
harness = _load("harness")


def _counted_flops(width):
    """FLOPs of a real forward of one crop, counted by torch's FlopCounterMode (convs and GEMMs)."""
    model = VGG(width=width).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 1, 40, 40))
    return counter.get_total_flops()


@pytest.mark.parametrize("width", [1.0, 0.125, 0.3])
def test_flops_match_a_real_forward(width):
    assert harness.forward_flops_per_crop(width) == _counted_flops(width)
    assert harness.train_flops_per_image(width) == 30 * _counted_flops(width)


def test_flops_match_spec_figures():
    # docs/spec.md: forward about 0.70 GFLOP per crop, training about 21 GFLOP per image.
    assert harness.forward_flops_per_crop(1.0) == pytest.approx(0.70e9, rel=0.02)
    assert harness.train_flops_per_image(1.0) == pytest.approx(21e9, rel=0.02)
    assert harness.conv_flops(640, 64, 64, 40) == 2 * 640 * 40 * 40 * 64 * 64 * 9


# ------------------------------------------------------------------------------------------
# A device-check work folder as device_check.sh leaves it
# ------------------------------------------------------------------------------------------

SELFCHECK_ROWS = [
    {"op": "block", "backend": "fused", "check": "parity fp16", "passed": True, "max_error": 1.2e-3,
     "tolerance": 1e-2, "time_ms": None, "speedup": None},
    {"op": "block", "backend": "triton", "check": "parity fp32", "passed": False, "max_error": 0.5,
     "tolerance": 1e-4, "time_ms": None, "speedup": None},
    {"op": "augment", "backend": "native", "check": "bit-exact", "passed": True, "max_error": 0.0,
     "tolerance": 0.0, "time_ms": 2.5, "speedup": 21.0},
    {"op": "augment", "backend": "native", "check": "timing", "passed": None, "max_error": None,
     "tolerance": None, "time_ms": 2.5, "speedup": 21.0},
]


def _bench_entry(group, name, median, extra):
    data = [median * (1 + 0.05 * random.random()) for _ in range(4)]
    stats = {"min": min(data), "max": max(data), "mean": sum(data) / 4, "median": median,
             "iqr": 0.1 * median, "rounds": 4}
    return {"group": group, "name": name, "stats": stats, "extra_info": extra}


def _work_folder(tmp_path, rates):
    """A work folder and an $OUT holding the selfcheck's JSON, as device_check.sh leaves them."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "parts.tsv").write_text("env\t0\t3\t30\ninstall\t-1\t0\t0\nselfcheck\t1\t20\t150\n"
                                    "tests\t1\t40\t100\nbench\t124\t100\t100\n"
                                    "train\t-2\t0\t3\n")
    (work / "bench.log").write_text("line\nKilled by timeout\n")
    (work / "env.json").write_text(json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.x",
                                               "triton": "3.y", "commit": "abc123"}))
    (out / "selfcheck.json").write_text(json.dumps({"device": "cuda", "env": {}, "passed": False,
                                                    "rows": SELFCHECK_ROWS}))
    peak = 5e14
    benches = [
        _bench_entry("augment", "test_authors_pipeline", 64 / rates["authors"],
                     {"backend": "authors", "device": "cpu", "threads": 1, "items_per_call": 64,
                      "item": "images", "images_per_s": rates["authors"]}),
        _bench_entry("augment", "test_augment[cpu-native-t1]", 64 / rates["native"],
                     {"backend": "native", "device": "cpu", "threads": 1, "items_per_call": 64,
                      "item": "images", "images_per_s": rates["native"],
                      "ratio_vs_authors_1thread": rates["native"] / rates["authors"]}),
    ]
    for provider, median in (("eager+eager", rates["eager_step"]), ("fused+native", rates["fused_step"])):
        benches.append(_bench_entry("train-step", f"test_train_step[{provider}]", median, {
            "provider": provider, "items_per_call": 64, "item": "images", "width": 1.0,
            "images_per_s": 64 / median, "peak_mem_mb": 1234.0, "roofline_frac": 1.35e12 / median / peak}))
    benches.append(_bench_entry("block-1b", "test_block[1b-eager]", 0.004, {
        "layer": "1b", "backend": "eager", "shape": [640, 64, 64, 40], "pool": True,
        "items_per_call": 640, "item": "crops", "tflops_per_s": 56.6}))
    (work / "bench.json").write_text(json.dumps({
        "benchmarks": benches, "fer_fast": {"matmul_peak": {"flops_per_s": peak, "dtype": "float16",
                                                            "n": 8192}}}))
    (work / "bench.xml").write_text(
        '<testsuites><testsuite><testcase name="test_conv[1a-fwd-triton]">'
        '<skipped message="Triton conv kernels: GPU only here"/></testcase></testsuite></testsuites>')
    (work / "tests.xml").write_text(
        '<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure/></testcase>'
        '<testcase name="c"><skipped message="needs a GPU"/></testcase></testsuite></testsuites>')
    (work / "train_runs.tsv").write_text("reference\t--model-backend eager\n")
    run = work / "train-reference"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,train_acc,val_acc,epoch_time_s\n"
                                     f"1,1.9,0.2,0.25,{rates['epoch1']}\n"
                                     f"2,1.7,0.3,0.35,{rates['epoch2']}\n")
    return work, out


@pytest.fixture
def rates():
    r = random.Random()
    return {"authors": r.uniform(500, 900), "native": r.uniform(20000, 90000),
            "eager_step": r.uniform(0.02, 0.05), "fused_step": r.uniform(0.005, 0.02),
            "epoch1": r.uniform(5, 9), "epoch2": r.uniform(2, 4)}


def test_collect_gathers_every_part(tmp_path, rates):
    work, out = _work_folder(tmp_path, rates)
    result = report.collect(work, out, "gpu", False, "benchmarks/device_check.sh")
    saved = json.loads((out / "device_check.json").read_text())
    assert saved == json.loads(json.dumps(result))
    status = {p["name"]: p["status"] for p in saved["parts"]}
    assert status == {"env": "ok", "install": "skipped", "selfcheck": "failed", "tests": "failed",
                      "bench": "timeout", "train": "no time left"}
    assert saved["parts"][4]["tail"][-1] == "Killed by timeout"
    assert saved["tests"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert saved["selfcheck"]["rows"] == SELFCHECK_ROWS
    assert saved["skipped_benchmarks"] == {"test_conv[1a-fwd-triton]": "Triton conv kernels: GPU only here"}
    assert saved["training"][0]["epochs"][1]["train_loss"] == 1.7
    md = (out / "device_check.md").read_text()
    assert md == report.render(saved)
    assert f"{rates['eager_step'] / rates['fused_step']:.2f}×" in md            # fused vs eager
    assert f"{rates['native'] / rates['authors']:.2f}×" in md                   # native vs authors
    assert f"{64 / rates['fused_step']:,.0f}" in md
    assert "NVIDIA H100 80GB HBM3" in md and "`benchmarks/device_check.sh`" in md
    assert f"| {rates['epoch1']:.3g} | {rates['epoch2']:.3g} |" in md
    assert "| bench | timeout | 100 s / 100 s | Killed by timeout |" in md
    # the selfcheck's rows, whatever their keys, one column each
    assert "| op | backend | check | passed | max_error | tolerance | time_ms | speedup |" in md
    assert "| block | triton | parity fp32 | **FAIL** | 0.5 | 0.0001 | – | – |" in md
    assert "| augment | native | bit-exact | pass | 0 | 0 | 2.5 | 21 |" in md
    assert "**Selfcheck** on `cuda`: **a backend failed**" in md
    _assert_tables_well_formed(md)
    assert report.headlines(saved) == [
        "selfcheck: 2 of 3 checks passed; failed: block/triton",
        f"training step: {64 / rates['fused_step']:,.0f} images/s with `fused+native`, "
        f"{rates['eager_step'] / rates['fused_step']:.2f}× `eager+eager`",
        f"augmentation: {rates['native']:,.0f} images/s with `cpu-native-t1`; `cpu-native-t1` makes "
        f"{rates['native'] / rates['authors']:.1f}× the images/s of the authors' pipeline, both on one thread",
        "tests: 1 passed, 1 failed, 0 errors, 1 skipped",
        "did not finish: selfcheck (failed), tests (failed), bench (timeout), train (no time left)"]


def _assert_tables_well_formed(md):
    """Every row of every markdown table has as many cells as its header."""
    cells = None
    for line in md.splitlines():
        if not line.startswith("|"):
            cells = None
            continue
        assert line.endswith("|"), line
        count = line.replace("\\|", "").count("|")
        cells = cells or count
        assert count == cells, line


def test_collect_of_an_empty_work_folder(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    result = report.collect(work, tmp_path / "o", "cpu", True, "x")
    assert result["benchmarks"] == [] and result["parts"] == [] and result["tests"] is None
    assert result["selfcheck"] is None
    assert (tmp_path / "o" / "device_check.md").read_text().startswith("## CPU")


def _result(date, mode="gpu", quick=False, gpu="NVIDIA H100 80GB HBM3", value=None, selfcheck=None):
    return {"schema": report.SCHEMA, "date": date, "mode": mode, "quick": quick,
            "command": "benchmarks/device_check.sh", "env": {"gpu": gpu if mode == "gpu" else None,
                                                              "torch": "t", "triton": "u"},
            "parts": [], "selfcheck": selfcheck, "benchmarks": [_bench_row(value)], "training": []}


def _bench_row(value):
    return {"group": "train-step", "name": "test_train_step[eager+eager]", "provider": "eager+eager",
            "items_per_call": 64, "item": "images", "median_s": 64 / value if value else 0.1,
            "iqr_s": 0.001, "images_per_s": value or 640.0}


def _write_out(folder, result):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "device_check.json").write_text(json.dumps(result))
    return folder


def test_slug_names_the_device_model():
    assert report.device_slug(_result("2026-11-20T10:00:00+00:00")) == "h100"
    assert report.device_slug(_result("2026-11-21T10:00:00+00:00", gpu="NVIDIA H200")) == "h200"
    assert report.device_slug(_result("2026-11-22T10:00:00+00:00", mode="cpu")) == "cpu"


def test_save_never_overwrites_another_run(tmp_path):
    results = tmp_path / "results"
    first = report.save(_write_out(tmp_path / "a", _result("2026-11-20T10:00:00+00:00")), results)
    again = report.save(tmp_path / "a", results)
    second = report.save(_write_out(tmp_path / "b", _result("2026-11-20T12:00:00+00:00")), results)
    assert first.name == again.name == "2026-11-20-h100.json"
    assert second.name == "2026-11-20-h100-2.json"
    assert json.loads(second.read_text())["date"] == "2026-11-20T12:00:00+00:00"
    assert json.loads(first.read_text())["date"] == "2026-11-20T10:00:00+00:00"
    assert (results / "2026-11-20-h100-2.md").read_text() == report.render(json.loads(second.read_text()))


def test_readme_summary_is_replaced_between_markers_only(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    h100_old, h100_new, h200 = random.uniform(1000, 2000), random.uniform(3000, 4000), random.uniform(5000, 6000)
    cpu_rate = random.uniform(10, 90)
    check = {"device": "cuda", "passed": False, "rows": SELFCHECK_ROWS}
    for name, result in (("o", _result("2026-11-20T10:00:00+00:00", value=h100_old)),
                         ("n", _result("2026-11-25T10:00:00+00:00", value=h100_new)),
                         ("h", _result("2026-11-24T10:00:00+00:00", gpu="NVIDIA H200", value=h200,
                                       selfcheck=check)),
                         ("q", _result("2026-11-26T10:00:00+00:00", quick=True, value=1.0)),
                         ("c", _result("2026-11-21T10:00:00+00:00", mode="cpu", value=cpu_rate))):
        report.save(_write_out(tmp_path / name, result), results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{report.START}\nstale text\n{report.END}\n\n## After\n")
    report.update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n" + report.START + "\n")
    assert text.endswith(report.END + "\n\n## After\n") and "stale text" not in text
    section = text.split(report.START)[1].split(report.END)[0]
    assert f"{h100_new:,.0f} images/s" in section and f"{h100_old:,.0f}" not in section  # latest per device
    assert f"{h200:,.0f} images/s" in section and f"{cpu_rate:.3g} images/s" in section
    assert "2026-11-26" not in section                                                   # quick runs never
    assert section.index("NVIDIA H100") < section.index("NVIDIA H200") < section.index("CPU")
    assert "selfcheck: 2 of 3 checks passed; failed: block/triton" in section
    assert "(benchmarks/results/2026-11-25-h100.md)" in section                          # the full tables
    assert "|" not in section and len(section.splitlines()) < 20                         # a summary, not tables
    report.update_readme(readme, results)
    assert readme.read_text() == text  # idempotent


def test_readme_rerenders_every_results_markdown(tmp_path):
    results = tmp_path / "results"
    saved = report.save(_write_out(tmp_path / "a", _result("2026-11-20T10:00:00+00:00", value=1500.0)),
                        results)
    saved.with_suffix(".md").write_text("edited by hand\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.START}\n{report.END}\n")
    assert report.main(["readme", "--readme", str(readme), "--results", str(results)]) == 0
    assert saved.with_suffix(".md").read_text() == report.render(json.loads(saved.read_text()))
    assert "| `eager+eager` | 1,500 |" in saved.with_suffix(".md").read_text()


def test_committed_results_and_readme_are_generated_from_the_json():
    results = BENCH / "results"
    assert sorted(results.glob("*.json")), "no committed device-check result"
    for path in results.glob("*.json"):
        assert path.with_suffix(".md").read_text() == report.render(report.load_result(path)), \
            f"{path.with_suffix('.md')} is stale: run python benchmarks/report.py readme"
    readme = (BENCH.parent / "README.md").read_text()
    section = readme.split(report.START)[1].split(report.END)[0]
    assert section.strip() == report.summary(results, BENCH.parent).strip(), \
        "the README's performance summary is stale: run python benchmarks/report.py readme"


@pytest.mark.parametrize("body", ["no markers\n", f"{report.END}\n{report.START}\n",
                                  f"{report.START}\n{report.START}\n{report.END}\n"])
def test_readme_without_one_marker_pair_is_refused(tmp_path, body):
    readme = tmp_path / "README.md"
    readme.write_text(body)
    with pytest.raises(report.ReportError, match="README.md: needs exactly one"):
        report.update_readme(readme, tmp_path)
    assert readme.read_text() == body


def test_cli_reports_bad_inputs(tmp_path, capsys):
    assert report.main(["readme", "--readme", str(tmp_path / "missing.md"),
                        "--results", str(tmp_path)]) == 2
    assert "missing.md: no such file" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{}")
    readme = tmp_path / "R.md"
    readme.write_text(f"{report.START}\n{report.END}\n")
    assert report.main(["readme", "--readme", str(readme), "--results", str(tmp_path)]) == 2
    assert "junk.json: not a device-check result" in capsys.readouterr().err
    assert report.main(["save", str(tmp_path / "no_run"), "--readme", str(readme),
                        "--results", str(tmp_path / "r")]) == 2
    assert "device_check.json: not a device-check result" in capsys.readouterr().err
