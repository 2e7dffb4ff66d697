"""A local web page for a trained model: ``python -m fer_fast demo MODEL [--port 7860]``.

Upload a photo (or take one with the webcam): every face is boxed with its expression and a
probability bar per class, the probabilities of each face are listed, and (for checkpoints and
safetensors, which run in PyTorch) the saliency map of each face's predicted class can be shown.
Built with Gradio (``pip install fer_fast[demo]``); the page is served on this machine only
(127.0.0.1), with Gradio's analytics off and no share link. The photos it is given and the
pictures it shows are files in Gradio's cache: they are deleted once they are older than
CACHE_SECONDS (checked as often) and all of them when the page stops.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np

from . import cli

__all__ = ["build_demo", "describe_model", "main"]

#: the longest an uploaded photo or a shown picture stays in Gradio's cache (plus one check period)
CACHE_SECONDS = 600


def describe_model(model, predictor) -> str:
    """What the page serves: the model file, recipe, width and validation accuracy when known
    (``model``: the command's MODEL argument, None for the bundled model)."""
    if model is None:
        from . import bundled

        return bundled.describe()
    classifier = predictor.classifier
    if hasattr(classifier, "model"):  # a VGG in PyTorch
        recipe, width = classifier.model.recipe, classifier.model.width
    else:  # ONNX: the architecture is in the file's metadata
        meta = classifier.session.get_modelmeta().custom_metadata_map
        recipe, width = meta["recipe"], meta["width"]
    text = f"{Path(model).name}: VGG width {float(width):g}, {recipe} recipe"
    val_acc = _validation_accuracy(Path(model))
    if val_acc is not None:
        text += f", {100 * val_acc:.2f}% validation ten-crop accuracy"
    return text


def _validation_accuracy(path: Path) -> float | None:
    """The best validation accuracy a fer_fast.train checkpoint records (None: not recorded,
    e.g. the authors' checkpoints and exported files)."""
    if path.suffix.lower() not in (".pt", ".pth"):
        return None
    from .checkpoint import load_checkpoint

    logs = load_checkpoint(path).get("logs")
    value = logs.get("best_val_acc") if isinstance(logs, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def check_port(port: int) -> None:
    """Refuse a port another program listens on before anything is loaded."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise cli.UserError(f"port {port} on 127.0.0.1 is in use ({e.strerror}); choose "
                                f"another with --port") from None


def saliency_panel(predictor, faces_u8: np.ndarray,
                   labels: list[int]) -> list[tuple[np.ndarray, str]] | None:
    """One (image, caption) per face: the 48x48 face beside its saliency map, 4x larger,
    captioned with the face's number and predicted class (None: the model does not run in
    PyTorch, or no face)."""
    import torch

    from .predict import _TorchClassifier
    from .saliency import saliency_map

    classifier = predictor.classifier
    if not isinstance(classifier, _TorchClassifier) or len(faces_u8) == 0:
        return None
    maps = saliency_map(classifier.model, torch.from_numpy(faces_u8).to(classifier.device),
                        torch.tensor(labels, device=classifier.device)).cpu().numpy()
    panel = []
    for i, (face, sal, label) in enumerate(zip(faces_u8, maps, labels)):
        gray = np.repeat(face[..., None], 3, axis=2).astype(np.float32)
        heat = np.stack([sal, sal ** 2, np.zeros_like(sal)], axis=-1) * 255  # black-red-yellow
        over = 0.45 * gray + 0.55 * heat
        pair = np.concatenate([gray, over], axis=1).clip(0, 255).astype(np.uint8)
        panel.append((pair.repeat(4, axis=0).repeat(4, axis=1),
                      f"face {i + 1}: {predictor.class_names[label]}"))
    return panel


def build_demo(predictor, served: str):
    """The Gradio Blocks page of ``predictor`` (a fer_fast.Predictor); ``served`` names its
    model on the page (describe_model)."""
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
        saliency = saliency_panel(predictor, faces_u8, [int(np.argmax(p)) for p in probs]) \
            if show_saliency else None
        return annotate(rgb, faces), largest.probabilities, "\n".join(lines), saliency

    with gr.Blocks(title="fer_fast: facial expressions", analytics_enabled=False,
                   delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
        gr.Markdown("## Facial expressions\nUpload a photo or use the webcam: each face is boxed "
                    "with its expression and one probability bar per class.")
        gr.Markdown(f"Model: {served}", elem_id="model")
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
                saliency = gr.Gallery(label="face | saliency of its class", elem_id="saliency")
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
                   help="port on 127.0.0.1 to serve the page on")
    p.add_argument("--detector", default="auto",
                   help="auto, centerface, haar, mtcnn, none (the photo is one face), or an OpenCV "
                        ".xml/.onnx model")
    cli.add_device_arg(p)
    cli.add_debug_arg(p)
    args = p.parse_args(argv)
    check_port(args.port)
    from .predict import Predictor

    predictor = Predictor(args.model, device=args.device, detector=args.detector)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise cli.UserError("the demo page needs Gradio: pip install fer_fast[demo]") from None
    served = describe_model(args.model, predictor)
    page = build_demo(predictor, served)
    print(f"serving {served} on http://127.0.0.1:{args.port} (Ctrl-C stops)", flush=True)
    try:  # quiet: no Gradio banner (its share-link hint does not apply to a local page)
        page.launch(server_name="127.0.0.1", server_port=args.port, share=False,
                    inbrowser=False, show_error=True, quiet=True)
    except OSError:  # taken since check_port
        raise cli.UserError(f"port {args.port} on 127.0.0.1 is in use; choose another with "
                            f"--port") from None
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
