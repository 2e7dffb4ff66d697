"""Export a trained VGG: ``python -m fer_fast export CHECKPOINT --onnx PATH --weights PATH``.

ONNX (``pip install fer_fast[onnx]``): the evaluation graph, opset :data:`ONNX_OPSET`, built
node by node from the weights (no tracing). Input ``crops``: float32 ``[batch, 1, 40, 40]``,
pixels / 255 (the crops of :func:`fer_fast.ten_crop`), ``batch`` dynamic; output ``logits``
``[batch, 7]`` (average the ten crops of an image, as evaluation does). BatchNorm uses its
running statistics: in the released recipe (conv -> BN -> ReLU) it is folded into the
convolution's weights and bias; in the paper recipe (conv -> ReLU -> BN) the ReLU sits between
them, so it stays as one per-channel scale and shift (Mul, Add). Dropout is gone (eval).
The model's metadata holds the recipe, width and class names.

safetensors: the ``fer_fast.VGG`` state_dict as is, with the architecture in the header's
metadata (``recipe``, ``order``, ``width``, ``num_classes``, ``class_names``), so
:func:`load_safetensors` rebuilds the model with no pickle involved.

After writing ONNX, the export runs it with onnxruntime against the PyTorch model on random
crops and on crops of face-like images and prints the largest logit difference; above
:data:`ONNX_TOLERANCE` it fails.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import cli, files
from .model import BLOCKS, CLASS_NAMES, NUM_CLASSES, VGG

__all__ = ["ONNX_OPSET", "ONNX_TOLERANCE", "ExportError", "folded_blocks", "onnx_model",
           "export_onnx", "onnx_max_difference", "save_safetensors", "load_safetensors",
           "save_checkpoint", "main"]

#: Opset of the exported graph (Conv, Relu, MaxPool, Mul, Add, Flatten, Gemm): onnxruntime
#: has run opset 17 since 1.12 (2022).
ONNX_OPSET = 17
#: Opsets --opset accepts: every op of the graph exists unchanged in them, and all fit IR 8.
MIN_OPSET, MAX_OPSET = 13, 18
#: Largest allowed |logit difference| between onnxruntime and PyTorch, relative to the largest
#: |logit| (at least 1): fp32 differs only by the folding's rounding and summation order.
ONNX_TOLERANCE = 1e-4
_FORMAT = "fer_fast.VGG"


class ExportError(cli.UserError):
    """A model or file that cannot be exported or loaded; the message says which and why."""


def folded_blocks(model: VGG) -> list[dict[str, np.ndarray | bool | None]]:
    """Per conv block the evaluation-mode arrays: ``weight``, ``bias`` of the convolution
    (BatchNorm folded in for the released order), ``scale``/``shift`` of a BatchNorm after the
    ReLU (paper order, else None), and ``pool``."""
    blocks = []
    for name, _, pool in BLOCKS:
        conv, bn = getattr(model, f"conv{name}"), getattr(model, f"bn{name}")
        w = conv.weight.detach().double().cpu()
        b = conv.bias.detach().double().cpu()
        scale = bn.weight.detach().double().cpu() / torch.sqrt(
            bn.running_var.detach().double().cpu() + bn.eps)
        shift = bn.bias.detach().double().cpu() - bn.running_mean.detach().double().cpu() * scale
        if model.order == "bn_relu":
            w, b, scale, shift = w * scale.view(-1, 1, 1, 1), b * scale + shift, None, None
        as_f32 = (lambda t: None if t is None else t.float().numpy())
        blocks.append(dict(weight=as_f32(w), bias=as_f32(b), scale=as_f32(scale),
                           shift=as_f32(shift), pool=pool))
    return blocks


def onnx_model(model: VGG, *, opset: int = ONNX_OPSET):
    """The evaluation graph of ``model`` as an ``onnx.ModelProto`` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    x = "crops"
    for (name, _, _), block in zip(BLOCKS, folded_blocks(model)):
        y = f"conv{name}"
        nodes.append(helper.make_node("Conv", [x, const(f"{y}.weight", block["weight"]),
                                               const(f"{y}.bias", block["bias"])], [y],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [y], [f"relu{name}"]))
        x = f"relu{name}"
        if block["scale"] is not None:
            c = block["scale"].shape[0]
            nodes.append(helper.make_node("Mul", [x, const(f"bn{name}.scale",
                                                           block["scale"].reshape(1, c, 1, 1))],
                                          [f"bn{name}.scaled"]))
            nodes.append(helper.make_node("Add", [f"bn{name}.scaled", const(
                f"bn{name}.shift", block["shift"].reshape(1, c, 1, 1))], [f"bn{name}"]))
            x = f"bn{name}"
        if block["pool"]:
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{name}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"pool{name}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x = "flat"
    for i in (1, 2, 3):
        lin = getattr(model, f"lin{i}")
        out = "logits" if i == 3 else f"lin{i}"
        nodes.append(helper.make_node(
            "Gemm", [x, const(f"lin{i}.weight", lin.weight.detach().cpu().numpy()),
                     const(f"lin{i}.bias", lin.bias.detach().cpu().numpy())], [out], transB=1))
        if i < 3:
            nodes.append(helper.make_node("Relu", [out], [f"relu_lin{i}"]))
            x = f"relu_lin{i}"
    graph = helper.make_graph(
        nodes, "fer_fast_vgg",
        [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["batch", 1, 40, 40])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["batch", model.lin3.out_features])],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fer_fast")
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime >= 1.12
    helper.set_model_props(proto, _metadata(model))
    onnx.checker.check_model(proto)
    return proto


def _metadata(model: VGG) -> dict[str, str]:
    names = CLASS_NAMES if model.lin3.out_features == NUM_CLASSES else \
        tuple(str(i) for i in range(model.lin3.out_features))
    return {"format": _FORMAT, "recipe": model.recipe, "order": model.order,
            "width": repr(float(model.width)), "num_classes": str(model.lin3.out_features),
            "class_names": json.dumps(list(names)),
            "input": "crops float32 [batch, 1, 40, 40] = pixels / 255 of fer_fast.ten_crop; "
                     "average the logits of an image's ten crops"}


def export_onnx(model: VGG, path, *, opset: int = ONNX_OPSET) -> None:
    """Write the evaluation graph of ``model`` to ``path`` (refuses an existing file)."""
    path = Path(path)
    _refuse_existing(path)
    proto = onnx_model(model, opset=opset)
    _write_new(path, proto.SerializeToString())


def onnx_max_difference(model: VGG, path, crops: torch.Tensor) -> tuple[float, float]:
    """(max |logits onnxruntime - logits PyTorch|, max |logits PyTorch|) on ``crops``
    (float32 [N, 1, 40, 40]); PyTorch runs the eager model in eval mode, fp32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"crops": crops.float().cpu().numpy()})[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(crops.float().to(next(model.parameters()).device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def save_safetensors(model: VGG, path) -> None:
    """``model.state_dict()`` in safetensors with the architecture in the metadata (refuses an
    existing file)."""
    from safetensors.torch import save

    path = Path(path)
    _refuse_existing(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = _metadata(model)
    metadata.pop("input")
    _write_new(path, save(tensors, metadata=metadata))


def save_checkpoint(model: VGG, path) -> None:
    """``model`` as a weights-only fer_fast checkpoint (params and the architecture in
    ``config``), with its sha256 sidecar (refuses an existing file)."""
    from .checkpoint import save_atomic

    path = Path(path)
    _refuse_existing(path)
    save_atomic({"params": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "config": {"recipe": model.recipe, "width": float(model.width)}}, path)


def load_safetensors(path, *, backend: str = "eager") -> VGG:
    """The VGG saved by :func:`save_safetensors` (architecture from the metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ExportError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != _FORMAT:
        raise ExportError(f"{path}: no fer_fast architecture in the metadata (format "
                          f"{metadata.get('format')!r}, expected {_FORMAT!r})")
    try:
        model = VGG(metadata["recipe"], width=float(metadata["width"]),
                    num_classes=int(metadata["num_classes"]), backend=backend)
    except (KeyError, ValueError) as exc:
        raise ExportError(f"{path}: bad architecture metadata {metadata} ({exc})") from exc
    from .checkpoint import load_params

    load_params(model, tensors, path)
    return model.eval()


def _refuse_existing(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise ExportError(f"{path}: already exists (not overwritten; remove it or choose "
                          f"another name)")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: folder {path.parent} does not exist")


def _write_new(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a file that must not exist yet: through a temporary file of the
    same folder (removed on failure, a full disk included) and a no-clobber rename."""
    try:
        files.write_bytes(path, payload)
    except FileExistsError:
        raise ExportError(f"{path}: already exists (not overwritten)") from None


def _check_crops(seed: int = 0) -> torch.Tensor:
    """Random crops and the ten crops of face-like images: what the ONNX check runs."""
    from .augmentation import ten_crop
    from .synthetic import generate

    g = torch.Generator().manual_seed(seed)
    faces, _ = generate(4, seed=seed)
    real = ten_crop(torch.from_numpy(faces), backend="eager")
    return torch.cat([torch.rand(6, 1, 40, 40, generator=g), real])


@cli.command
def main(argv=None) -> int:
    p = cli.Parser(prog="python -m fer_fast export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a .pt checkpoint of fer_fast.train (or the authors') (default: the "
                        "bundled model, fer_fast/models/MODEL_CARD.md)")
    p.add_argument("--onnx", metavar="PATH", help="write the ONNX evaluation graph here (default: not written)")
    p.add_argument("--weights", metavar="PATH", help="write the weights as safetensors here (default: not written)")
    p.add_argument("--pt", metavar="PATH", help="write the weights as a fer_fast checkpoint (.pt; "
                   "e.g. for train --init) (default: not written)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset")
    cli.add_debug_arg(p)
    args = p.parse_args(argv)
    if not (args.onnx or args.weights or args.pt):
        p.error("nothing to do: give --onnx PATH, --weights PATH and/or --pt PATH")
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        p.error(f"--opset must be in {MIN_OPSET}..{MAX_OPSET} (ONNX IR version 8), "
                f"got {args.opset}")
    from .checkpoint import model_from_checkpoint

    for out in filter(None, (args.onnx, args.weights, args.pt)):
        _refuse_existing(Path(out))
    if args.checkpoint is None:
        from . import bundled
        from .predict import say_bundled

        model = bundled.load()
        say_bundled(None)
    else:
        model, _ = model_from_checkpoint(args.checkpoint)
    model.eval()
    if args.onnx:
        try:
            export_onnx(model, args.onnx, opset=args.opset)
        except ImportError as exc:
            raise ExportError(f"ONNX export needs onnx and onnxruntime "
                              f"(pip install fer_fast[onnx]): {exc}") from None
        diff, scale = onnx_max_difference(model, args.onnx, _check_crops())
        ok = diff <= ONNX_TOLERANCE * max(1.0, scale)
        print(f"wrote {args.onnx} (opset {args.opset}, VGG(recipe={model.recipe!r}, "
              f"width={model.width})); onnxruntime vs PyTorch: max |logit difference| "
              f"{diff:.2e} (largest |logit| {scale:.2f}, tolerance "
              f"{ONNX_TOLERANCE:g} x max(1, that)) {'ok' if ok else 'TOO LARGE'}")
        if not ok:
            print(f"error: {args.onnx}: the ONNX model does not match the checkpoint",
                  file=sys.stderr)
            return 1
    if args.weights:
        try:
            save_safetensors(model, args.weights)
        except ImportError as exc:
            raise ExportError(f"safetensors export needs safetensors "
                              f"(pip install fer_fast[onnx]): {exc}") from None
        print(f"wrote {args.weights} (safetensors; architecture in the metadata)")
    if args.pt:
        save_checkpoint(model, args.pt)
        print(f"wrote {args.pt} (fer_fast checkpoint with its sha256 sidecar)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
