"""Predictor throughput: faces/s of ``Predictor.predict_batch`` with and without ten-crop.

Pre-cropped 48x48 faces (``detector="none"``), so the number is conversion + crops + the model's
forward pass, the part a deployment scales; the paper's VGG (width 1), random weights (speed
does not depend on them). ``--bench-quick``: width 0.125 and a few faces.
"""
from __future__ import annotations

import pytest
import torch

import harness
from fer_fast import VGG, Predictor
from fer_fast.augmentation import NUM_CROPS
from fer_fast.synthetic import generate


@pytest.mark.parametrize("tta", ["tencrop", "none"])
def test_predict_batch(benchmark, tta, device, quick):
    width, faces = (0.125, 8) if quick else (1.0, 64 if device.type == "cuda" else 16)
    torch.manual_seed(0)
    predictor = Predictor(VGG(width=width), device=str(device), detector="none", tta=tta)
    images = list(generate(faces, seed=0)[0])

    def run():
        result = predictor.predict_batch(images)
        harness.sync(device)
        return result

    result = run()
    assert [len(r) for r in result] == [1] * faces
    benchmark.group = "predict"
    benchmark.pedantic(run, rounds=2 if quick else 5, warmup_rounds=1)
    crops = faces * (NUM_CROPS if tta == "tencrop" else 1)
    harness.record(benchmark, items=faces, item="faces", tta=tta, width=width,
                   flops=crops * harness.forward_flops_per_crop(width))
