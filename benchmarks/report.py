"""Device-check results: one JSON per run, one markdown rendering of it, and the README summary.

For users (standard library only)::

    python benchmarks/report.py save DIR  # DIR: a device check's $OUT. Copies its
                                          # device_check.json to benchmarks/results/<date>-<device>
                                          # .json, renders the .md beside it, then does `readme`
    python benchmarks/report.py readme    # re-renders every benchmarks/results/*.md from its
                                          # JSON and rewrites the README's summary (markers)

For ``benchmarks/device_check.sh``: ``env`` (this machine as JSON), ``train-configs`` (its
training runs, one per line) and ``collect`` (its work folder -> ``device_check.json`` + ``.md``).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import functools
import importlib.util
import json
import os
import re
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

#: Benchmark tables in report order: the first word of the pytest-benchmark group -> (title,
#: baselines tried in order; each row's speed-up is over the first one found, in its own group).
TABLES = {
    "train": ("Training step: augmentation → forward → loss → backward → SGD step",
                   ("eager+eager",)),
    "augment": ("Augmentation, ten crops per image", ("authors", "eager")),
    "block": ("Conv + BN + ReLU (+ pool) block per VGG layer, forward + backward", ("eager",)),
    "conv": ("Convolution alone per VGG layer and pass (`torch`: cuDNN on a GPU, oneDNN on a CPU)",
             ("torch",)),
}


class ReportError(RuntimeError):
    """A results file or README that cannot be used; the message says which and why."""


# ----------------------------------------------------------------------------------------------
# env / train-configs: run on the measured machine
# ----------------------------------------------------------------------------------------------

def _run(*cmd: str) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def machine_env() -> dict:
    """GPU, driver, versions, CPU, load and commit: the header of every result."""
    import torch
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), None) if cpuinfo.exists() else None
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "python": sys.version.split()[0], "cpu": cpu, "cpu_count": os.cpu_count(),
           "loadavg_1m": os.getloadavg()[0], "commit": _run("git", "rev-parse", "--short", "HEAD"),
           "dirty": bool(_run("git", "status", "--porcelain", "--untracked-files=no"))}
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
        env["driver"] = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    return env


def train_configs(mode: str) -> list[tuple[str, list[str]]]:
    """The device check's training runs: the eager reference and each fast model backend with
    the best augmentation backend, all on the same synthetic data and seed."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import available_model_backends, best_augment
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    aug = best_augment(device)
    runs = [("reference", "eager", "eager")]
    runs += [(f"fer_fast-{b}", b, aug) for b in available_model_backends(device) if b != "eager"]
    return [(name, ["--model-backend", model, "--augment-backend", a]) for name, model, a in runs]


# ----------------------------------------------------------------------------------------------
# collect: device_check.sh's work folder -> device_check.json + device_check.md
# ----------------------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parts(work: Path) -> list[dict]:
    """parts.tsv (name, rc, seconds, limit; rc -1 skipped, -2 no time left) with the log tail of
    each part that did not succeed."""
    parts = []
    path = work / "parts.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, limit = line.split("\t")
        rc = int(rc)
        status = {-1: "skipped", -2: "no time left", 0: "ok", 124: "timeout",
                  137: "timeout"}.get(rc, "failed")
        log = work / f"{name}.log"
        # a failed part's log tail; a skipped part's log is its reason (one line), if it has one
        tail = log.read_text(errors="replace").splitlines()[-10:] \
            if status != "ok" and log.exists() else []
        parts.append({"name": name, "status": status, "rc": rc, "seconds": int(seconds),
                      "limit_s": int(limit), "tail": tail})
    return parts


def _junit(path: Path) -> tuple[dict, dict] | None:
    """(passed/failed/errors/skipped counts, skip reason per test) of a pytest junit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    skips = {}
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        kind = next((k for t, k in (("failure", "failed"), ("error", "errors"),
                                    ("skipped", "skipped")) if t in kinds), "passed")
        counts[kind] += 1
        if kind == "skipped":
            message = case.find("skipped").get("message", "")
            skips[case.get("name")] = re.sub(r"^Skipped: ", "", message)
    return counts, skips


def _number(text: str):
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def _training(work: Path) -> list[dict]:
    """metrics.csv and result.json (stored as "summary") of each training run listed in
    train_runs.tsv."""
    runs = []
    index = work / "train_runs.tsv"
    for line in index.read_text().splitlines() if index.exists() else []:
        name, flags = line.split("\t")
        run_dir = work / f"train-{name}"
        epochs = []
        if (run_dir / "metrics.csv").exists():
            with open(run_dir / "metrics.csv", newline="") as f:
                epochs = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        runs.append({"name": name, "flags": flags, "epochs": epochs,
                     "summary": _read_json(run_dir / "result.json")})
    return runs


def collect(work: Path, out: Path, mode: str, quick: bool, command: str) -> dict:
    """Everything a device check measured, as one dict; written to ``out/device_check.json``
    and rendered to ``out/device_check.md``. The selfcheck's own JSON is read from
    ``out/selfcheck.json``, where its part writes it."""
    benchmarks, meta, skipped = [], {}, {}
    for path in sorted(work.glob("bench*.json")):
        data = _read_json(path) or {}
        meta.update({k: v for k, v in data.get("fer_fast", {}).items() if v is not None})
        for b in data.get("benchmarks", []):
            s = b["stats"]
            benchmarks.append({"group": b["group"], "name": b["name"], "rounds": s["rounds"],
                               "mean_s": s["mean"], "min_s": s["min"], **b["extra_info"],
                               "median_s": s["median"], "iqr_s": s["iqr"]})
    for path in sorted(work.glob("bench*.xml")):
        skipped.update((_junit(path) or ({}, {}))[1])
    tests = _junit(work / "tests.xml")
    result = {
        "schema": SCHEMA, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode, "quick": quick, "command": command,
        "env": _read_json(work / "env.json") or {}, "parts": _parts(work),
        "selfcheck": _read_json(out / "selfcheck.json"),
        "tests": tests[0] if tests else None,
        "matmul_peak": meta.get("matmul_peak"), "benchmarks": benchmarks, "skipped_benchmarks": skipped, "training": _training(work),
        "scaling": _read_json(work / "scaling.json"),
    }
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "device_check.json", json.dumps(result, indent=1) + "\n")
    _write(out / "device_check.md", render(result))
    return result


# ----------------------------------------------------------------------------------------------
# render: one result -> markdown (the only JSON -> markdown step)
# ----------------------------------------------------------------------------------------------

def _cell(value) -> str:
    """A table cell: numbers to 3 significant digits (thousands grouped), booleans as pass/FAIL."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "pass" if value else "**FAIL**"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}" if isinstance(value, int) or abs(value) >= 1000 else f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def result_title(result: dict) -> str:
    env = result.get("env") or {}
    if result["mode"] == "gpu":
        return env.get("gpu") or "unknown GPU"
    return f"CPU ({env.get('cpu') or 'unknown'}, {env.get('cpu_count')} cores)"


def _header(result: dict) -> str:
    env = result.get("env") or {}
    bits = [f"{k} {env[k]}" for k in ("torch", "triton", "cuda", "driver") if env.get(k)]
    bits.append(f"commit {env.get('commit')}{' (dirty)' if env.get('dirty') else ''}")
    if result["mode"] == "cpu" and env.get("loadavg_1m") is not None:
        bits.append(f"load average {env['loadavg_1m']:.1f} at the start")
    text = (", ".join(bits) + f".\nCommand: `{result['command']}`"
            + (" (quick sizes: a smoke run, not a measurement)" if result.get("quick") else "")
            + ".\n")
    peak = result.get("matmul_peak")
    if peak:
        text += (f"Measured {peak['dtype']} matmul peak (the roofline ceiling of the % columns): "
                 f"{peak['flops_per_s'] / 1e12:.3g} TFLOP/s.\n")
    return text


def _parts_table(result: dict) -> str:
    rows = []
    for p in result.get("parts", []):
        note = p["tail"][-1][:160] if p.get("tail") and p["status"] != "ok" else ""
        if p["name"] == "tests" and result.get("tests"):
            note = ", ".join(f"{v} {k}" for k, v in result["tests"].items())
        rows.append([p["name"], p["status"], f"{p['seconds']} s / {p['limit_s']} s", note])
    return _table(["part", "status", "time / limit", "note"], rows) if rows else ""


def _selfcheck_table(result: dict) -> str:
    """The selfcheck's rows as they come, one column per key."""
    check = result.get("selfcheck")
    if not isinstance(check, dict):
        return ""
    rows = check.get("rows") or []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    verdict = {True: ": every backend passed", False: ": **a backend failed**"}.get(
        check.get("passed"), "")
    text = f"**Selfcheck** on `{check.get('device')}`{verdict}.\n\n"
    return text + (_table(columns, [[row.get(c) for c in columns] for row in rows]) if rows else "")


def _label(row: dict) -> str:
    """The benchmark's pytest id, e.g. ``1b-fused`` of ``test_block[1b-fused]``."""
    found = re.search(r"\[(.*)\]$", row["name"])
    return found.group(1) if found else row.get("provider") or row.get("backend") or row["name"]


def _who(row: dict) -> str | None:
    return row.get("provider") or row.get("backend")


def _benchmark_table(rows: list[dict], title: str, baselines: tuple[str, ...]) -> str:
    """One row per benchmark; a column only where some row has a value for it."""
    base_name = next((b for b in baselines if any(_who(r) == b for r in rows)), None)
    base = {}
    for r in rows:
        if _who(r) == base_name:
            base.setdefault(r["group"], r["median_s"])
    first = rows[0]
    item = first.get("item", "items")
    columns = [
        ("case", lambda r: f"`{_label(r)}`"),
        ("shape", lambda r: r.get("shape") and
         "{}×{}→{}×{}²".format(*r["shape"]) + (" +pool" if r.get("pool") else "")),
        (f"{item}/s", lambda r: r.get(f"{item}_per_s")),
        ("median ms", lambda r: r["median_s"] * 1e3),
        ("IQR ms", lambda r: r["iqr_s"] * 1e3),
        ("device ms", lambda r: r.get("device_ms")),
        ("TFLOP/s", lambda r: r.get("tflops_per_s")),
        ("% of peak", lambda r: r.get("roofline_frac") and f"{100 * r['roofline_frac']:.1f} %"),
        ("peak MB", lambda r: r.get("peak_mem_mb")),
        (f"× `{base_name}`",
         lambda r: r["group"] in base and f"{base[r['group']] / r['median_s']:.2f}×"),
    ]
    columns = [(name, get) for name, get in columns if any(get(r) for r in rows)]
    where = f"{first['items_per_call']} {item} per call" + (
        f", VGG width {first['width']}" if first.get("width") else "")
    return (f"**{title}** ({where}):\n\n"
            + _table([name for name, _ in columns],
                     [[get(r) or None for _, get in columns] for r in rows]))


def _training_table(result: dict) -> str:
    out = []
    for run in result.get("training", []):
        last = run["epochs"][-1] if run["epochs"] else {}
        times = [e["epoch_time_s"] for e in run["epochs"] if e.get("epoch_time_s") is not None]
        test = (run.get("summary") or {}).get("test_acc_last")
        percent = [f"{100 * v:.1f} %" if v is not None else "–"
                   for v in (last.get("train_acc"), last.get("val_acc"), test)]
        out.append([run["name"], f"`{run['flags']}`", len(run["epochs"]),
                    f"{last['train_loss']:.4f}" if last.get("train_loss") is not None else "–",
                    *percent, times[0] if times else None,
                    statistics.median(times[1:]) if len(times) > 1 else None])
    if not out:
        return ""
    return ("**Training on the synthetic data** (same data and seed; last epoch):\n\n"
            + _table(["run", "flags", "epochs", "train loss", "train acc", "val acc", "test acc",
                      "first epoch s", "later epochs s"], out))


def _scaling_table(result: dict) -> str:
    scaling = result.get("scaling")
    if not scaling:
        return ""
    rows = [[r["processes"], r["images_per_s"], r["speedup"], r["efficiency"],
             f"{100 * r['val_acc']:.1f} %"] for r in scaling["rows"]]
    return (f"**Data-parallel scaling** (torchrun, {scaling['device']}, "
            f"`{' '.join(scaling['train_args'])}`, last of {scaling['epochs']} epochs):\n\n"
            + _table(["processes", "images/s", "speed-up", "efficiency", "val acc"], rows))


def _skips(result: dict) -> str:
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted((result.get("skipped_benchmarks") or {}).items()):
        by_reason.setdefault(reason, []).append(f"`{name}`")
    lines = [f"- {', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}: "
             f"{reason}" for reason, names in by_reason.items()]
    return "Skipped benchmarks:\n" + "\n".join(lines) + "\n" if lines else ""


def render(result: dict) -> str:
    """Markdown of one result: header, parts, selfcheck, benchmarks, training runs, skips."""
    sections = [f"## {result_title(result)}, {result['date'][:10]}\n", _header(result),
                _parts_table(result), _selfcheck_table(result)]
    rows = result.get("benchmarks", [])
    for kind, (title, baselines) in TABLES.items():
        mine = [r for r in rows if r["group"].split("-")[0] == kind]
        if mine:
            sections.append(_benchmark_table(mine, title, baselines))
    sections += [_training_table(result), _scaling_table(result), _skips(result)]
    return "\n".join(s for s in sections if s)


# ----------------------------------------------------------------------------------------------
# save / readme
# ----------------------------------------------------------------------------------------------

def load_result(path: Path) -> dict:
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "mode" not in data:
        raise ReportError(f"{path}: not a device-check result (schema {SCHEMA})")
    return data


def device_slug(result: dict) -> str:
    """``h100``, ``h200``, ``a100``..., or ``cpu``."""
    if result["mode"] == "cpu":
        return "cpu"
    name = ((result.get("env") or {}).get("gpu") or "gpu").lower()
    model = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", name)
    return model.group(1) if model else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def _write(path: Path, text: str) -> None:
    """Replace one of the report's own files (a temporary file renamed into place: a full
    disk or a crash never leaves it half-written; see fer_fast.files)."""
    _files().write_text(path, text, overwrite=True)


@functools.cache
def _files():
    """fer_fast/files.py, loaded by its path: it needs only the standard library, while
    importing it through the package imports torch, 3-4 s that the device check would spend
    after every part (it collects the results so far each time)."""
    spec = importlib.util.spec_from_file_location("fer_fast_files", ROOT / "fer_fast" / "files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(device_out: Path, results: Path) -> Path:
    """Copy ``device_out/device_check.json`` to ``results/<date>-<device>[-n].json`` (the same run
    again replaces its own file, never another run's) and render the .md beside it."""
    result = load_result(device_out / "device_check.json")
    results.mkdir(parents=True, exist_ok=True)
    slug = f"{result['date'][:10]}-{device_slug(result)}"
    stem, n = slug, 1
    while (results / f"{stem}.json").exists() and \
            load_result(results / f"{stem}.json")["date"] != result["date"]:
        n += 1
        stem = f"{slug}-{n}"
    _write(results / f"{stem}.json", (device_out / "device_check.json").read_text())
    _write(results / f"{stem}.md", render(result))
    return results / f"{stem}.json"


def headlines(result: dict) -> list[str]:
    """A few lines for the README: selfcheck verdict, fastest training step, augmentation,
    tests, and the parts that did not finish."""
    lines = []
    check = result.get("selfcheck")
    if isinstance(check, dict) and check.get("rows"):
        verdicts = [r for r in check["rows"] if isinstance(r.get("passed"), bool)]
        failed = [f"{r.get('op')}/{r.get('backend')}" for r in verdicts if not r["passed"]]
        lines.append(f"selfcheck: {len(verdicts) - len(failed)} of {len(verdicts)} checks passed"
                     + (f"; failed: {', '.join(dict.fromkeys(failed))}" if failed else ""))
    steps = [r for r in result.get("benchmarks", []) if r["group"] == "train-step"]
    if steps:
        best = min(steps, key=lambda r: r["median_s"])
        eager = next((r for r in steps if r.get("provider") == "eager+eager"), None)
        speedup = f", {eager['median_s'] / best['median_s']:.2f}× `eager+eager`" if eager else ""
        lines.append(f"training step: {_cell(best.get('images_per_s'))} images/s with "
                     f"`{best.get('provider')}`{speedup}")
    augment = [r for r in result.get("benchmarks", []) if r["group"] == "augment"]
    if augment:
        best = min(augment, key=lambda r: r["median_s"])
        line = f"augmentation: {_cell(best.get('images_per_s'))} images/s with `{_label(best)}`"
        ratio = max(augment, key=lambda r: r.get("ratio_vs_authors_1thread") or 0)
        if ratio.get("ratio_vs_authors_1thread"):
            line += (f"; `{_label(ratio)}` makes {ratio['ratio_vs_authors_1thread']:.1f}× the "
                     f"images/s of the authors' pipeline, both on one thread")
        lines.append(line)
    if result.get("tests"):
        lines.append("tests: " + ", ".join(f"{v} {k}" for k, v in result["tests"].items()))
    unfinished = [f"{p['name']} ({p['status']})" for p in result.get("parts", [])
                  if p["status"] not in ("ok", "skipped")]
    if unfinished:
        lines.append("did not finish: " + ", ".join(unfinished))
    return lines


def summary(results: Path, root: Path) -> str:
    """The README text between the markers: the latest full run per device, newest first."""
    latest: dict[str, tuple[Path, dict]] = {}
    for path in sorted(results.glob("*.json")):
        result = load_result(path)
        key = device_slug(result)
        if result.get("quick"):
            continue
        if key not in latest or result["date"] > latest[key][1]["date"]:
            latest[key] = (path, result)
    text = ["_Generated by `python benchmarks/report.py readme` from `benchmarks/results/`: the "
            "latest full device check per device; the full tables are in the linked files._\n"]
    if not any(r["mode"] == "gpu" for _, r in latest.values()):
        text.append("No GPU result yet: run `benchmarks/device_check.sh` on a GPU machine, then "
                    "`python benchmarks/report.py save <its $OUT>`.\n")
    newest_first = sorted(latest.values(), key=lambda pr: pr[1]["date"], reverse=True)
    for path, result in sorted(newest_first, key=lambda pr: pr[1]["mode"] != "gpu"):
        md = path.with_suffix(".md")
        rel = md.relative_to(root) if md.is_relative_to(root) else md
        env = result.get("env") or {}
        text.append(f"**{result_title(result)}**, {result['date'][:10]} (torch {env.get('torch')}, "
                    f"triton {env.get('triton')}, commit {env.get('commit')}; "
                    f"[full tables]({rel})):\n")
        text.append("".join(f"- {line}\n" for line in headlines(result)))
    return "\n".join(text)


def update_readme(readme: Path, results: Path) -> None:
    """Re-render every results/*.md from its JSON, then replace the README's text between the
    markers with :func:`summary`; everything else in the README is kept."""
    if not readme.exists():
        raise ReportError(f"{readme}: no such file")
    text = readme.read_text()
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ReportError(f"{readme}: needs exactly one '{START}' followed by one '{END}'")
    for path in sorted(results.glob("*.json")):
        _write(path.with_suffix(".md"), render(load_result(path)))
    head, rest = text.split(START)
    tail = rest.split(END)[1]
    body = summary(results, readme.resolve().parent)
    _write(readme, f"{head}{START}\n{body.rstrip()}\n{END}{tail}")


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/report.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="this machine (GPU, versions, commit) as JSON")
    tc = sub.add_parser("train-configs", help="the device check's training runs: name, flags")
    tc.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    c = sub.add_parser("collect", help="a device check's work folder -> device_check.json/.md")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    c.add_argument("--quick", action="store_true")
    c.add_argument("--command", required=True)
    c.add_argument("--print", action="store_true",
                   help="print the markdown, then the headline numbers (what a log's tail shows)")
    sv = sub.add_parser("save", help="store a device check's result in benchmarks/results/")
    sv.add_argument("device_out", type=Path, help="folder holding device_check.json (its $OUT)")
    rd = sub.add_parser("readme", help="re-render the results' .md and the README summary")
    for q in (sv, rd):
        q.add_argument("--results", type=Path, default=RESULTS)
        q.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    try:
        if args.cmd == "env":
            print(json.dumps(machine_env(), indent=1))
        elif args.cmd == "train-configs":
            for name, flags in train_configs(args.mode):
                print(name, *flags)
        elif args.cmd == "collect":
            result = collect(args.work, args.out, args.mode, args.quick, args.command)
            if args.print:
                print(render(result) + "\nHeadlines:")
                print("".join(f"- {line}\n" for line in headlines(result)), end="")
        else:
            if args.cmd == "save":
                print(f"saved {save(args.device_out, args.results)}")
            update_readme(args.readme, args.results)
            print(f"updated {args.readme} and the .md of {args.results}")
    except ReportError as err:
        print(f"report.py: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
