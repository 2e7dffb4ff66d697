"""``python -m fer_fast COMMAND ...``: the command-line tools under one name."""
import importlib
import sys

# command -> (module whose main(argv) runs it, what it does)
COMMANDS = {
    "train": ("fer_fast.train", "train the VGG"),
    "evaluate": ("fer_fast.evaluate", "ten-crop accuracy of a checkpoint"),
    "saliency": ("fer_fast.saliency", "saliency maps, one per class"),
    "plot": ("fer_fast.plots", "curves.png and confusion.png of a run"),
    "experiments": ("fer_fast.experiments", "the paper's studies as sets of runs, and their report"),
    "predict": ("fer_fast.predict", "expressions of the faces in photos, folders, videos, a webcam"),
    "export": ("fer_fast.export", "a checkpoint as ONNX and/or safetensors"),
    "demo": ("fer_fast.demo", "a local web page: upload a photo, see each face's expression"),
    "selfcheck": ("fer_fast.selfcheck", "verify and time the fast backends on this machine"),
}

_WIDTH = max(map(len, COMMANDS))
USAGE = (f"usage: python -m fer_fast {{{','.join(COMMANDS)}}} [options]\n"
         + "\n".join(f"  {name:<{_WIDTH}} {what} (python -m fer_fast {name} --help)"
                     for name, (_, what) in COMMANDS.items()))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
              f"(python -m fer_fast lists them)", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
