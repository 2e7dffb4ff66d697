"""``python -m fer_fast {train,evaluate,saliency,predict,export,demo} ...``: the command-line tools under one name."""
import sys

USAGE = ("usage: python -m fer_fast {train,evaluate,saliency,predict,export,demo} [options]\n"
         "  train     train the VGG (python -m fer_fast.train --help)\n"
         "  evaluate  ten-crop accuracy of a checkpoint (python -m fer_fast.evaluate --help)\n"
         "  saliency  saliency maps, one per class (python -m fer_fast.saliency --help)\n"
         "  predict   expressions of the faces in photos, folders, videos, a webcam\n"
         "  export    a checkpoint as ONNX and/or safetensors\n"
         "  demo      a local web page: upload a photo, see each face's expression")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("train", "evaluate", "saliency", "predict", "export", "demo"):
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "train":
        from .train import main as tool
    elif argv[0] == "evaluate":
        from .evaluate import main as tool
    elif argv[0] == "saliency":
        from .saliency import main as tool
    elif argv[0] == "predict":
        from .predict import main as tool
    elif argv[0] == "export":
        from .export import main as tool
    else:
        from .demo import main as tool
    return tool(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
