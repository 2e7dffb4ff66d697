"""Device-check results: collect, render, store, and the README's performance section.

Subcommands (``python benchmarks/report.py <cmd> --help``):

``env``            print this machine's description (GPU, versions, commit) as JSON;
``train-configs``  print the training runs of the device check, one per line: name, flags;
``summarize``      turn a device check's work folder into ``device_check.json`` + ``.md`` under
                   ``--out`` and print the markdown (what ``device_check.sh`` calls last);
``save``           copy a device check's ``device_check.json``/``.md`` to
                   ``benchmarks/results/<date>-<gpu|cpu>.json/.md``, then run ``readme``;
``readme``         rewrite the README's text between ``<!-- perf:start -->`` and
                   ``<!-- perf:end -->`` from the latest GPU and the latest CPU result.

Only ``env`` and ``train-configs`` import torch / fer_fast; the rest is standard library.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- perf:start -->", "<!-- perf:end -->"
SCHEMA = 1


class ReportError(RuntimeError):
    """A results file or README that cannot be used; the message says which and why."""


# ----------------------------------------------------------------------------------------------
# env / train-configs (run on the measured machine)
# ----------------------------------------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_env() -> dict:
    """GPU model, driver, versions, CPU, load and the commit: the header of every result."""
    import torch
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "python": sys.version.split()[0], "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
           "loadavg_1m": os.getloadavg()[0], "commit": _git("rev-parse", "--short", "HEAD"),
           "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if env["gpu"]:
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        env["gpu_sms"] = props.multi_processor_count
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = None
    return env


def train_configs(mode: str) -> list[tuple[str, list[str]]]:
    """The device check's training runs: the eager reference and each fast block backend with the
    best augmentation backend, all on the same synthetic data and seed."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import best_augment, model_backends
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    aug = best_augment(device)
    runs = [("reference", "eager", "eager")]
    runs += [(f"fer_fast-{b}", b, aug) for b in model_backends(device) if b != "eager"]
    return [(name, ["--block-backend", block, "--augment-backend", a]) for name, block, a in runs]


# ----------------------------------------------------------------------------------------------
# summarize: work folder -> one JSON + one markdown table
# ----------------------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_parts(work: Path) -> list[dict]:
    """parts.tsv rows (name, rc, seconds, limit) written by device_check.sh, with log tails."""
    parts = []
    path = work / "parts.tsv"
    if not path.exists():
        return parts
    for line in path.read_text().splitlines():
        name, rc, seconds, limit = line.split("\t")
        rc, seconds, limit = int(rc), int(seconds), int(limit)
        if rc == -1:
            status = "skipped"
        elif rc == -2:
            status = "no time left"
        elif rc in (124, 137):
            status = "timeout"
        else:
            status = "ok" if rc == 0 else "failed"
        log = work / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        parts.append({"name": name, "status": status, "rc": rc, "seconds": seconds,
                      "limit_s": limit, "tail": tail if status != "ok" else tail[-3:]})
    return parts


def read_junit(path: Path) -> dict | None:
    """passed / failed / errors / skipped counts and the skip reasons of a pytest junit XML."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    skips = {}
    for case in root.iter("testcase"):
        kinds = [child.tag for child in case]
        if "failure" in kinds:
            counts["failed"] += 1
        elif "error" in kinds:
            counts["errors"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
            msg = case.find("skipped").get("message", "")
            skips[case.get("name")] = re.sub(r"^Skipped: ", "", msg)
        else:
            counts["passed"] += 1
    return {**counts, "skips": skips}


def read_benchmarks(path: Path) -> tuple[list[dict], dict]:
    """Compact rows of a pytest-benchmark JSON, and its fer_fast metadata."""
    data = _read_json(path)
    if not data:
        return [], {}
    rows = []
    for b in data.get("benchmarks", []):
        s = b["stats"]
        rows.append({"group": b["group"], "name": b["name"], "rounds": s["rounds"],
                     "mean_s": s["mean"], "min_s": s["min"],
                     **b["extra_info"], "median_s": s["median"], "iqr_s": s["iqr"]})
    return rows, data.get("fer_fast", {})


def read_training(work: Path) -> list[dict]:
    """metrics.csv (+ summary.json) of each training run listed in train_runs.tsv."""
    runs = []
    index = work / "train_runs.tsv"
    if not index.exists():
        return runs
    for line in index.read_text().splitlines():
        name, flags = line.split("\t")
        run_dir = work / f"train-{name}"
        rows = []
        metrics = run_dir / "metrics.csv"
        if metrics.exists():
            with open(metrics, newline="") as f:
                for row in csv.DictReader(f):
                    rows.append({k: _number(v) for k, v in row.items()})
        runs.append({"name": name, "flags": flags, "epochs": rows,
                     "summary": _read_json(run_dir / "summary.json")})
    return runs


def _number(text: str):
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def summarize(work: Path, out: Path, mode: str, quick: bool, command: str) -> dict:
    benchmarks, meta, skipped, raw = [], {}, {}, {}
    for path in sorted(work.glob("bench*.json")):
        rows, m = read_benchmarks(path)
        benchmarks += rows
        meta.update({k: v for k, v in m.items() if v is not None})
        raw[path.stem] = _read_json(path)
    for path in sorted(work.glob("bench*.xml")):
        skipped.update((read_junit(path) or {"skips": {}})["skips"])
    tests = read_junit(work / "tests.xml")
    result = {
        "schema": SCHEMA, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode, "quick": quick, "command": command,
        "env": _read_json(work / "env.json") or {}, "parts": read_parts(work),
        "tests": {k: v for k, v in tests.items() if k != "skips"} if tests else None,
        "matmul_peak": meta.get("matmul_peak"), "bench_device": meta.get("device_name"),
        "benchmarks": benchmarks, "skipped_benchmarks": skipped,
        "training": read_training(work),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "device_check.md").write_text(render(result, level=2))
    if raw:
        (out / "benchmarks_raw.json").write_text(json.dumps(raw) + "\n")
    return result


# ----------------------------------------------------------------------------------------------
# render: one result -> markdown
# ----------------------------------------------------------------------------------------------

def _f(value, fmt: str = "{:.3g}", none: str = "–") -> str:
    return none if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def result_title(result: dict) -> str:
    env = result.get("env", {})
    what = env.get("gpu") if result["mode"] == "gpu" else f"CPU ({env.get('cpu') or 'unknown'}, " \
        f"{env.get('cpu_count')} cores)"
    return f"{what or 'unknown device'}, {result['date'][:10]}"


def _header(result: dict) -> str:
    env = result.get("env", {})
    bits = [f"torch {env.get('torch')}", f"triton {env.get('triton')}"]
    if env.get("cuda"):
        bits.append(f"CUDA {env['cuda']}")
    if env.get("driver"):
        bits.append(f"driver {env['driver']}")
    bits.append(f"commit {env.get('commit')}{' (dirty)' if env.get('dirty') else ''}")
    if result["mode"] == "cpu":
        bits.append(f"load average {_f(env.get('loadavg_1m'), '{:.1f}')} at the start")
    peak = result.get("matmul_peak")
    lines = [", ".join(bits) + ".",
             f"Command: `{result['command']}`" + (" (quick sizes: a smoke run, not a measurement)"
                                                  if result.get("quick") else "") + "."]
    if peak:
        what = (f"{peak['dtype']} {peak['n']}³ matmul" if result["mode"] != "cpu" else
                f"better of a {peak['dtype']} {peak['n']}³ matmul and a 3×3 convolution")
        lines.append(f"Measured matmul peak (roofline ceiling, best of repeats): "
                     f"{peak['flops_per_s'] / 1e12:.3g} TFLOP/s ({what}).")
    return "\n".join(lines) + "\n"


def _parts(result: dict) -> str:
    rows = []
    for p in result.get("parts", []):
        note = ""
        if p["name"] == "tests" and result.get("tests"):
            t = result["tests"]
            note = f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, " \
                   f"{t['skipped']} skipped"
        elif p["status"] not in ("ok", "skipped") and p.get("tail"):
            note = p["tail"][-1][:120].replace("|", "\\|")
        rows.append([p["name"], p["status"], f"{p['seconds']} s / {p['limit_s']} s", note])
    return _table(["part", "status", "time / limit", "note"], rows) if rows else ""


def _by_group(result: dict, prefix: str) -> list[dict]:
    return [b for b in result.get("benchmarks", []) if b["group"].startswith(prefix)]


def _train_step(result: dict) -> str:
    rows = _by_group(result, "train-step")
    if not rows:
        return ""
    # baselines: eager (with eager and with the best augmentation) and torch.compile
    bases = {r["provider"]: r["median_s"] for r in rows
             if r["provider"].split("+")[0] in ("eager", "compile")}
    out = []
    for r in sorted(rows, key=lambda r: r["median_s"]):
        out.append([f"`{r['provider']}`", _f(r.get("images_per_s"), "{:,.0f}"),
                    _f(r["median_s"] * 1e3, "{:.2f}"), _f(r["iqr_s"] * 1e3, "{:.2f}"),
                    _f(r.get("peak_mem_mb"), "{:,.0f}"),
                    _f(r.get("roofline_frac") and 100 * r["roofline_frac"], "{:.1f} %")]
                   + [f"{base / r['median_s']:.2f}×" for base in bases.values()])
    first = rows[0]
    text = (f"**Training step** ({first['items_per_call']} images × 10 crops, width "
            f"{first.get('width')}; augmentation → forward → loss → backward → SGD step):\n\n")
    return text + _table(["provider (model+augmentation)", "images/s", "median ms", "IQR ms",
                          "peak MB", "% of matmul peak"] + [f"× `{b}`" for b in bases], out)


def _augment(result: dict) -> str:
    rows = _by_group(result, "augment")
    if not rows:
        return ""
    authors = next((r.get("images_per_s") for r in rows if r.get("backend") == "authors"), None)
    fastest_step = min((r["median_s"] for r in _by_group(result, "train-step")), default=None)
    step_device = "cuda" if result["mode"] == "gpu" else "cpu"
    out = []
    for r in rows:
        ratio = authors and r.get("images_per_s") and r.get("device") == "cpu" \
            and r.get("threads") == 1 and r["backend"] != "authors" and r["images_per_s"] / authors
        seconds = r["device_ms"] / 1e3 if r.get("device_ms") else r["median_s"]
        share = fastest_step and r.get("device") == step_device and seconds / fastest_step
        out.append([r.get("device", ""), f"`{r['backend']}`", _f(r.get("threads"), "{}"),
                    _f(r.get("images_per_s"), "{:,.0f}"), _f(r["median_s"] * 1e6, "{:,.1f}"),
                    _f(r.get("device_ms") and r["device_ms"] * 1e3, "{:,.1f}"),
                    _f(ratio or None, "{:.1f}×"), _f(share and 100 * share, "{:.2g} %")])
    text = (f"**Augmentation** ({rows[0]['items_per_call']} images → 10 crops each per call; "
            f"share = time per call ÷ the fastest training step of as many images):\n\n")
    native = next((r for r in rows if r.get("backend") == "native" and r.get("device") == "cpu"
                   and r.get("threads") == 1 and r.get("images_per_s")), None)
    if authors and native:
        text += (f"Native CPU kernel on one thread: **{native['images_per_s'] / authors:.1f}×** "
                 f"the authors' torchvision pipeline on one thread "
                 f"({native['images_per_s']:,.0f} vs {authors:,.0f} images/s).\n\n")
    return text + _table(["device", "backend", "threads", "images/s", "µs per call (wall)",
                          "µs (CUDA events)", "× authors, 1 thread", "share of step"], out)


def _blocks(result: dict) -> str:
    rows = _by_group(result, "block-")
    if not rows:
        return ""
    names = sorted({r["backend"] for r in rows}, key=lambda n: (n != "eager", n))
    layers = sorted({r["layer"] for r in rows})
    out = []
    for layer in layers:
        cells = {r["backend"]: r for r in rows if r["layer"] == layer}
        any_row = next(iter(cells.values()))
        n, cin, cout, hw = any_row["shape"]
        line = [layer, f"{n}×{cin}→{cout}×{hw}²{' +pool' if any_row['pool'] else ''}"]
        for name in names:
            r = cells.get(name)
            line.append("–" if r is None else
                        f"{r['median_s'] * 1e3:.2f} ({_f(r.get('tflops_per_s'), '{:.3g}')})")
        out.append(line)
    text = ("**Block forward + backward** per VGG layer: median ms (conv TFLOP/s); "
            "batch × C_in → C_out × H²:\n\n")
    return text + _table(["layer", "shape"] + [f"`{n}`" for n in names], out)


def _convs(result: dict) -> str:
    rows = _by_group(result, "conv-")
    if not rows:
        return ""
    columns = sorted({(r["conv_pass"], r["backend"]) for r in rows},
                     key=lambda c: (("fwd", "dgrad", "wgrad").index(c[0]), c[1] != "torch", c[1]))
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        cells = {(r["conv_pass"], r["backend"]): r for r in rows if r["layer"] == layer}
        n, cin, cout, hw = next(iter(cells.values()))["shape"]
        line = [layer, f"{n}×{cin}→{cout}×{hw}²"]
        for col in columns:
            r = cells.get(col)
            line.append("–" if r is None else
                        f"{_f(r.get('tflops_per_s'), '{:.3g}')} "
                        f"({_f(r.get('roofline_frac') and 100 * r['roofline_frac'], '{:.0f} %')})")
        out.append(line)
    text = ("**Convolution alone** per layer and pass: TFLOP/s (% of the matmul peak); `torch` = "
            "cuDNN (GPU) / oneDNN (CPU):\n\n")
    return text + _table(["layer", "shape"] + [f"{p} `{b}`" for p, b in columns], out)


def _training(result: dict) -> str:
    runs = result.get("training", [])
    if not runs:
        return ""
    out = []
    for run in runs:
        rows = run["epochs"]
        if not rows:
            out.append([run["name"], run["flags"], "no metrics"] + ["–"] * 5)
            continue
        last = rows[-1]
        times = [r["epoch_time_s"] for r in rows if r.get("epoch_time_s") is not None]
        steady = statistics.median(times[1:]) if len(times) > 1 else (times[0] if times else None)
        test = (run.get("summary") or {}).get("test_acc_last")
        out.append([run["name"], run["flags"], str(len(rows)), _f(last.get("train_loss"), "{:.4f}"),
                    _f(last.get("train_acc") and 100 * last["train_acc"], "{:.1f} %"),
                    _f(last.get("val_acc") and 100 * last["val_acc"], "{:.1f} %"),
                    _f(test and 100 * test, "{:.1f} %"),
                    f"{_f(times[0] if times else None, '{:.1f}')} / {_f(steady, '{:.1f}')}"])
    text = "**Training on the synthetic data** (same seed and data; last epoch):\n\n"
    return text + _table(["run", "flags", "epochs", "train loss", "train acc", "val acc",
                          "test acc", "epoch s (first / rest)"], out)


def _skips(result: dict) -> str:
    """Skipped benchmarks grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted((result.get("skipped_benchmarks") or {}).items()):
        by_reason.setdefault(reason, []).append(name)
    lines = []
    for reason, names in by_reason.items():
        shown = ", ".join(f"`{n}`" for n in names[:3]) + (f" and {len(names) - 3} more"
                                                          if len(names) > 3 else "")
        lines.append(f"- {shown}: {reason}")
    return ("Skipped:\n" + "\n".join(lines) + "\n") if lines else ""


def _parts_line(result: dict) -> str:
    """The parts table in one line (README)."""
    bits = []
    for p in result.get("parts", []):
        if p["status"] == "skipped":
            continue
        bit = f"{p['name']} {p['status']} ({p['seconds']} s"
        if p["name"] == "tests" and result.get("tests"):
            t = result["tests"]
            bit += f": {t['passed']} passed, {t['failed']} failed, {t['errors']} errors"
        bits.append(bit + ")")
    return ("Parts: " + ", ".join(bits) + ".\n") if bits else ""


def render(result: dict, level: int = 2, compact: bool = False) -> str:
    """Markdown of one result: header, parts, training step, augmentation, blocks, convs,
    training runs; ``compact`` gives the parts as one line (the README)."""
    h = "#" * level
    sections = [f"{h} {result_title(result)}\n", _header(result),
                _parts_line(result) if compact else _parts(result),
                _train_step(result), _augment(result), _blocks(result), _convs(result),
                _training(result),
                _skips(result)]
    return "\n".join(s for s in sections if s)


# ----------------------------------------------------------------------------------------------
# save / readme
# ----------------------------------------------------------------------------------------------

def load_result(path: Path) -> dict:
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "mode" not in data:
        raise ReportError(f"{path}: not a device-check result (schema {SCHEMA})")
    return data


def result_slug(result: dict) -> str:
    """``<date>-<gpu>``: e.g. 2026-11-20-h100, or 2026-11-20-cpu."""
    if result["mode"] == "cpu":
        device = "cpu"
    else:
        name = (result.get("env", {}).get("gpu") or "gpu").lower()
        model = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", name)
        device = model.group(1) if model else re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"{result['date'][:10]}-{device}"


def save(device_out: Path, results: Path) -> Path:
    """Copy device_check.json/.md to results/<date>-<gpu>.json/.md (never over another run)."""
    result = load_result(device_out / "device_check.json")
    results.mkdir(parents=True, exist_ok=True)
    slug, n = result_slug(result), 1
    stem = slug
    while (results / f"{stem}.json").exists():
        if load_result(results / f"{stem}.json")["date"] == result["date"]:
            break  # the same run again: overwrite
        n += 1
        stem = f"{slug}-{n}"
    shutil.copyfile(device_out / "device_check.json", results / f"{stem}.json")
    md = device_out / "device_check.md"
    (results / f"{stem}.md").write_text(md.read_text() if md.exists() else render(result))
    return results / f"{stem}.json"


def latest(results: Path) -> dict[str, tuple[Path, dict]]:
    """The newest full (not quick) result per mode ("gpu", "cpu")."""
    best: dict[str, tuple[Path, dict]] = {}
    for path in sorted(results.glob("*.json")):
        result = load_result(path)
        if result.get("quick"):
            continue
        mode = result["mode"]
        if mode not in best or result["date"] > best[mode][1]["date"]:
            best[mode] = (path, result)
    return best


def perf_section(results: Path, root: Path) -> str:
    """The README text between the markers."""
    found = latest(results)
    parts = ["_Generated by `python benchmarks/report.py readme` from the latest results in "
             "`benchmarks/results/`; do not edit by hand._\n"]
    if "gpu" not in found:
        parts.append("No GPU result yet: run `benchmarks/device_check.sh` on a GPU machine, then "
                     "`python benchmarks/report.py save <its $OUT>`.\n")
    for mode in ("gpu", "cpu"):
        if mode in found:
            path, result = found[mode]
            rel = path.relative_to(root) if path.is_relative_to(root) else path
            parts.append(render(result, level=3, compact=True)
                         + f"\nFull result: [`{rel}`]({rel}).\n")
    return "\n".join(parts)


def update_readme(readme: Path, results: Path) -> None:
    """Replace the text between the perf markers of ``readme``; everything else is kept."""
    if not readme.exists():
        raise ReportError(f"{readme}: no such file")
    text = readme.read_text()
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ReportError(f"{readme}: needs exactly one '{START}' followed by one '{END}'")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    body = perf_section(results, readme.resolve().parent)
    readme.write_text(f"{head}{START}\n{body.rstrip()}\n{END}{tail}")


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/report.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    tc = sub.add_parser("train-configs")
    tc.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    s = sub.add_parser("summarize")
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    s.add_argument("--quick", action="store_true")
    s.add_argument("--command", required=True)
    sv = sub.add_parser("save")
    sv.add_argument("device_out", type=Path, help="folder holding device_check.json (its $OUT)")
    for q in (sv, sub.add_parser("readme")):
        q.add_argument("--results", type=Path, default=RESULTS)
        q.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    try:
        if args.cmd == "env":
            print(json.dumps(machine_env(), indent=1))
        elif args.cmd == "train-configs":
            for name, flags in train_configs(args.mode):
                print(name, *flags)
        elif args.cmd == "summarize":
            print(render(summarize(args.work, args.out, args.mode, args.quick, args.command)))
        else:
            if args.cmd == "save":
                print(f"saved {save(args.device_out, args.results)}")
            update_readme(args.readme, args.results)
            print(f"updated {args.readme}")
    except ReportError as err:
        print(f"report.py: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
