"""How well ``predict`` labels real faces in photo-like images: the detection benchmark's images
(benchmarks/detection.py) made from labelled FER2013 faces; each face the detector finds
(IoU >= 0.5 with its true box) is cut with each crop margin and classified by the model (the
bundled one unless --model); reports the share labelled right, against the same model on the
faces' original 48x48 crops and on crops cut at their true boxes.

    python benchmarks/predict_faces.py --data fer2013.csv                 # PrivateTest faces
    python benchmarks/predict_faces.py --data fer2013.csv --simple --images 300
    python benchmarks/predict_faces.py --data fer2013.csv --margins 0,0.1 --out DIR

PrivateTest faces (the validation split, which chose the bundled model's epoch and may choose
``predict``'s margin), images of the detection benchmark's held-out set (seed 1000). Rows:
*48x48 crops*: the faces as the dataset holds them (what the model's accuracy is measured on);
*true box*: cut from the image at the square the face was pasted into (what upscaling, noise and
JPEG cost); *margin m*: cut at the detector's box enlarged by m of its side on each side (what
``predict --margin m`` gives). All rows count the same faces: those the detector found.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

import detection  # puts the repository's root on sys.path
from fer_fast.predict import Predictor
from fer_fast.preprocess import to_fer_image

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2)


def found_faces(detector, samples) -> list[tuple[int, int, tuple, tuple]]:
    """(sample number, truth number, true box, detected box) of every face ``detector`` finds."""
    out = []
    for k, sample in enumerate(samples):
        boxes = detector(sample.image)
        for i, j in detection.matches(sample.truths, boxes).items():
            out.append((k, i, sample.truths[i].box, tuple(boxes[j])))
    return out


def label_accuracy(classify, samples, found, faces, labels, margins=MARGINS) -> dict[str, float]:
    """Share of the ``found`` faces labelled right by ``classify`` (uint8 [n, 48, 48] faces ->
    [n, classes] scores) per way of cutting the face (see the module docstring)."""
    truths = [samples[k].truths[i] for k, i, _, _ in found]
    want = labels[[t.face for t in truths]]
    crops = {"48x48 crops": faces[[t.face for t in truths]],
             "true box": np.stack([to_fer_image(samples[k].image, box=box)
                                   for k, _, box, _ in found])}
    for m in margins:
        crops[f"margin {m:g}"] = np.stack([to_fer_image(samples[k].image, box=box, margin=m)
                                           for k, _, _, box in found])
    return {name: float((classify(c).argmax(1) == want).mean()) for name, c in crops.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="FER2013 CSV (emotion,pixels,Usage) with "
                   "PrivateTest rows")
    p.add_argument("--model", help="checkpoint, safetensors or ONNX file (default: the bundled "
                   "model)")
    p.add_argument("--detector", default="auto", help="as predict's --detector")
    p.add_argument("--simple", action="store_true", help="one upright face of 100-220 px per "
                   "480x360 noisy canvas (detection.py --simple) instead of the cluttered set")
    p.add_argument("--images", type=int, default=160, help="images with faces")
    p.add_argument("--seed", type=int, default=1000, help="the detection benchmark's held-out seed")
    p.add_argument("--margins", default=",".join(f"{m:g}" for m in MARGINS))
    p.add_argument("--out", help="write results.json here")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    margins = [float(m) for m in args.margins.split(",")]
    faces, labels = detection.fer_faces(args.data, held_out=True)
    samples = detection.simple_set(faces, args.images, args.seed) if args.simple else \
        detection.make_set(faces, args.images, 0, args.seed)
    predictor = Predictor(args.model, device="cpu", detector=args.detector)
    found = found_faces(predictor.detector, samples)
    total = sum(len(s.truths) for s in samples)
    result = label_accuracy(predictor.classify, samples, found, faces, labels, margins)
    setup = (f"{'simple' if args.simple else 'cluttered'} set, seed {args.seed}, {len(samples)} "
             f"images, {total} PrivateTest faces, {len(found)} found by the detector")
    print(setup + "\n\n| faces cut as | labelled right (%) |\n|---|---|")
    for name, value in result.items():
        print(f"| {name} | {100 * value:.1f} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(
            {"setup": setup, "found": len(found), "faces": total, "accuracy": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
