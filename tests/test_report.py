"""benchmarks/report.py and the FLOP counts of benchmarks/harness.py.

The FLOP count is checked against torch's FlopCounterMode on a real forward pass; the report against device-check
work folders and results written here (a temporary README, never the repository's).
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
    # SPEC: forward about 0.70 GFLOP per crop, training about 21 GFLOP per image.
    assert harness.forward_flops_per_crop(1.0) == pytest.approx(0.70e9, rel=0.02)
    assert harness.train_flops_per_image(1.0) == pytest.approx(21e9, rel=0.02)
    assert harness.conv_flops(640, 64, 64, 40) == 2 * 640 * 40 * 40 * 64 * 64 * 9


# ------------------------------------------------------------------------------------------
# A device-check work folder as device_check.sh leaves it
# ------------------------------------------------------------------------------------------

def _bench_entry(group, name, median, extra):
    data = [median * (1 + 0.05 * random.random()) for _ in range(4)]
    stats = {"min": min(data), "max": max(data), "mean": sum(data) / 4, "median": median,
             "iqr": 0.1 * median, "rounds": 4}
    return {"group": group, "name": name, "stats": stats, "extra_info": extra}


def _work_folder(tmp_path, rates):
    work = tmp_path / "work"
    work.mkdir()
    (work / "parts.tsv").write_text("env\t0\t3\t30\ninstall\t-1\t0\t0\ntests\t1\t40\t100\n"
                                    "bench\t124\t100\t100\n")
    (work / "bench.log").write_text("line\nKilled by timeout\n")
    (work / "env.json").write_text(json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.x",
                                               "triton": "3.y", "commit": "abc123"}))
    peak = 5e14
    benches = [
        _bench_entry("augment", "test_authors_pipeline", 64 / rates["authors"],
                     {"backend": "authors", "device": "cpu", "threads": 1, "items_per_call": 64,
                      "images_per_s": rates["authors"]}),
        _bench_entry("augment", "test_augment[cpu-native-t1]", 64 / rates["native"],
                     {"backend": "native", "device": "cpu", "threads": 1, "items_per_call": 64,
                      "images_per_s": rates["native"]}),
    ]
    for provider, median in (("eager+eager", rates["eager_step"]), ("fused+native", rates["fused_step"])):
        benches.append(_bench_entry("train-step", f"test_train_step[{provider}]", median, {
            "provider": provider, "items_per_call": 64, "width": 1.0, "images_per_s": 64 / median,
            "peak_mem_mb": 1234.0, "roofline_frac": 1.35e12 / median / peak}))
    benches.append(_bench_entry("block-1b", "test_block[1b-eager]", 0.004, {
        "layer": "1b", "backend": "eager", "shape": [640, 64, 64, 40], "pool": True,
        "tflops_per_s": 56.6}))
    (work / "bench.json").write_text(json.dumps({
        "benchmarks": benches, "fer_fast": {"matmul_peak": {"flops_per_s": peak, "dtype": "float16",
                                                            "n": 8192}}}))
    (work / "tests.xml").write_text(
        '<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure/></testcase>'
        '<testcase name="c"><skipped message="needs a GPU"/></testcase></testsuite></testsuites>')
    (work / "train_runs.tsv").write_text("reference\t--block-backend eager\n")
    run = work / "train-reference"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,train_acc,val_acc,epoch_time_s\n"
                                     f"1,1.9,0.2,0.25,{rates['epoch1']}\n"
                                     f"2,1.7,0.3,0.35,{rates['epoch2']}\n")
    return work


@pytest.fixture
def rates():
    r = random.Random()
    return {"authors": r.uniform(500, 900), "native": r.uniform(20000, 90000),
            "eager_step": r.uniform(0.02, 0.05), "fused_step": r.uniform(0.005, 0.02),
            "epoch1": r.uniform(5, 9), "epoch2": r.uniform(2, 4)}


def test_summarize_collects_every_part(tmp_path, rates):
    work = _work_folder(tmp_path, rates)
    out = tmp_path / "out"
    result = report.summarize(work, out, "gpu", False, "benchmarks/device_check.sh")
    saved = json.loads((out / "device_check.json").read_text())
    assert saved == json.loads(json.dumps(result))
    status = {p["name"]: p["status"] for p in saved["parts"]}
    assert status == {"env": "ok", "install": "skipped", "tests": "failed", "bench": "timeout"}
    assert saved["parts"][3]["tail"][-1] == "Killed by timeout"
    assert saved["tests"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert saved["training"][0]["epochs"][1]["train_loss"] == 1.7
    md = (out / "device_check.md").read_text()
    speedup = rates["eager_step"] / rates["fused_step"]
    assert f"{speedup:.2f}×" in md                                   # fused vs eager
    assert f"{rates['native'] / rates['authors']:.1f}×" in md        # native vs authors
    assert f"{64 / rates['fused_step']:,.0f}" in md
    assert "NVIDIA H100 80GB HBM3" in md and "`benchmarks/device_check.sh`" in md
    assert f"{rates['epoch1']:.1f} / {rates['epoch2']:.1f}" in md
    for line in md.splitlines():
        if line.startswith("|"):
            assert line.endswith("|")


def test_summarize_of_an_empty_work_folder(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    result = report.summarize(work, tmp_path / "o", "cpu", True, "x")
    assert result["benchmarks"] == [] and result["parts"] == [] and result["tests"] is None
    assert (tmp_path / "o" / "device_check.md").read_text().startswith("## CPU")


def _result(date, mode="gpu", quick=False, gpu="NVIDIA H100 80GB HBM3", value=None):
    return {"schema": report.SCHEMA, "date": date, "mode": mode, "quick": quick,
            "command": "benchmarks/device_check.sh", "env": {"gpu": gpu if mode == "gpu" else None,
                                                              "torch": "t", "triton": "u"},
            "parts": [], "benchmarks": [_bench_row(value)], "training": []}


def _bench_row(value):
    return {"group": "train-step", "provider": "eager+eager", "items_per_call": 64,
            "median_s": 64 / value if value else 0.1, "iqr_s": 0.001,
            "images_per_s": value or 640.0}


def _write_out(folder, result):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "device_check.json").write_text(json.dumps(result))
    (folder / "device_check.md").write_text(report.render(result))
    return folder


def test_slug_names_the_gpu_model():
    assert report.result_slug(_result("2026-11-20T10:00:00+00:00")) == "2026-11-20-h100"
    assert report.result_slug(_result("2026-11-21T10:00:00+00:00", gpu="NVIDIA H200")) \
        == "2026-11-21-h200"
    assert report.result_slug(_result("2026-11-22T10:00:00+00:00", mode="cpu")) == "2026-11-22-cpu"


def test_save_never_overwrites_another_run(tmp_path):
    results = tmp_path / "results"
    first = report.save(_write_out(tmp_path / "a", _result("2026-11-20T10:00:00+00:00")), results)
    again = report.save(tmp_path / "a", results)
    second = report.save(_write_out(tmp_path / "b", _result("2026-11-20T12:00:00+00:00")), results)
    assert first.name == again.name == "2026-11-20-h100.json"
    assert second.name == "2026-11-20-h100-2.json"
    assert (results / "2026-11-20-h100-2.md").exists()


def test_readme_section_is_replaced_between_markers_only(tmp_path):
    results = tmp_path / "results"
    gpu_old, gpu_new = random.uniform(1000, 2000), random.uniform(3000, 4000)
    cpu_rate = random.uniform(10, 90)
    for name, result in (("o", _result("2026-11-20T10:00:00+00:00", value=gpu_old)),
                         ("n", _result("2026-11-25T10:00:00+00:00", value=gpu_new)),
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
    assert f"{gpu_new:,.0f}" in section and f"{gpu_old:,.0f}" not in section   # latest GPU
    assert f"{cpu_rate:,.0f}" in section                                        # latest CPU
    assert "2026-11-26" not in section                                          # quick runs never
    assert section.index("NVIDIA H100") < section.index("CPU")
    report.update_readme(readme, results)
    assert readme.read_text() == text  # idempotent


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
