"""A local web page for a trained model: ``python -m fer_fast demo MODEL [--port 7860]``.

Upload a photo (or take one with the webcam): every face is boxed with its expression and a
probability bar per class, the probabilities of each face are listed, and (for checkpoints and
safetensors, which run in PyTorch) the saliency map of each face's predicted class can be shown.
Built with Gradio (``pip install fer_fast[demo]``); the page is served on this machine only
(127.0.0.1), with Gradio's analytics off and no share link.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from . import cli

__all__ = ["build_demo", "main"]


def _saliency_strip(predictor, faces_u8: np.ndarray, labels: list[int]) -> np.ndarray | None:
    """RGB strip, one row per face: the 48x48 face and its saliency map over it, 4x larger."""
    import torch

    from .predict import _TorchClassifier
    from .saliency import saliency_map

    classifier = predictor.classifier
    if not isinstance(classifier, _TorchClassifier) or len(faces_u8) == 0:
        return None
    maps = saliency_map(classifier.model, torch.from_numpy(faces_u8).to(classifier.device),
                        torch.tensor(labels, device=classifier.device)).cpu().numpy()
    rows = []
    for face, sal in zip(faces_u8, maps):
        gray = np.repeat(face[..., None], 3, axis=2).astype(np.float32)
        heat = np.stack([sal, sal ** 2, np.zeros_like(sal)], axis=-1) * 255  # black-red-yellow
        over = 0.45 * gray + 0.55 * heat
        rows.append(np.concatenate([gray, over], axis=1))
    strip = np.concatenate(rows, axis=0).clip(0, 255).astype(np.uint8)
    return strip.repeat(4, axis=0).repeat(4, axis=1)


def build_demo(predictor):
    """The Gradio Blocks page of ``predictor`` (a :class:`fer_fast.Predictor`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .predict import annotate

    def run(image, show_saliency):
        if image is None:
            return None, {}, "Upload a photo or take one with the webcam.", None
        rgb = np.asarray(image)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        rgb = np.ascontiguousarray(rgb[..., :3])
        boxes, faces_u8 = predictor.faces_of(rgb)
        probs = predictor.classify(faces_u8)
        faces = predictor.faces_from(boxes, probs)
        if not faces:
            return rgb, {}, "No face found.", None
        lines = [f"face {i + 1} at {f.box}: {f.label} ({100 * f.probability:.1f}%)"
                 for i, f in enumerate(faces)]
        largest = max(faces, key=lambda f: f.box[2] * f.box[3])
        saliency = _saliency_strip(predictor, faces_u8, [int(np.argmax(p)) for p in probs]) \
            if show_saliency else None
        return annotate(rgb, faces), largest.probabilities, "\n".join(lines), saliency

    with gr.Blocks(title="fer_fast: facial expressions", analytics_enabled=False) as page:
        gr.Markdown("## Facial expressions\nUpload a photo or use the webcam: each face is boxed "
                    "with its expression and one probability bar per class.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(sources=["upload", "webcam"], type="numpy", label="photo")
                show_saliency = gr.Checkbox(label="saliency map of the predicted class",
                                            value=False)
                button = gr.Button("Classify", variant="primary")
            with gr.Column():
                annotated = gr.Image(type="numpy", label="faces", elem_id="annotated")
                label = gr.Label(num_top_classes=7, label="largest face", elem_id="label")
                summary = gr.Textbox(label="all faces", elem_id="summary", lines=3)
                saliency = gr.Image(type="numpy", label="face | saliency", elem_id="saliency")
        outputs = [annotated, label, summary, saliency]
        image.change(run, [image, show_saliency], outputs)
        button.click(run, [image, show_saliency], outputs)
    return page


@cli.command
def main(argv=None) -> int:
    p = cli.Parser(prog="python -m fer_fast demo", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint (.pt), or .safetensors / .onnx of fer_fast export (default: "
                        "the bundled model, fer_fast/models/MODEL_CARD.md)")
    p.add_argument("--port", type=cli.number(int, low=1, high=65535), default=7860,
                   help="port on 127.0.0.1")
    p.add_argument("--detector", default="auto",
                   help="auto, haar, none (the photo is one face), or an OpenCV .xml/.onnx model")
    cli.add_device_arg(p)
    cli.add_debug_arg(p)
    args = p.parse_args(argv)
    from .predict import Predictor, say_bundled

    predictor = Predictor(args.model, device=args.device, detector=args.detector)
    say_bundled(args.model)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise cli.UserError("the demo page needs Gradio: pip install fer_fast[demo]") from None
    page = build_demo(predictor)
    print(f"serving on http://127.0.0.1:{args.port} (Ctrl-C stops)")
    try:
        page.launch(server_name="127.0.0.1", server_port=args.port, share=False,
                    inbrowser=False, show_error=True)
    except OSError as exc:
        raise cli.UserError(f"cannot serve on 127.0.0.1:{args.port} ({exc})") from None
    except KeyboardInterrupt:
        pass
    return 0

if __name__ == "__main__":
    sys.exit(main())
