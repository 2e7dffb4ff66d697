"""``python -m fer_fast {train,evaluate,saliency,selfcheck} ...``: the command-line tools."""
import sys

USAGE = ("usage: python -m fer_fast {train,evaluate,saliency,selfcheck} [options]\n"
         "  train     train the VGG (python -m fer_fast.train --help)\n"
         "  evaluate  ten-crop accuracy of a checkpoint (python -m fer_fast.evaluate --help)\n"
         "  saliency  saliency maps, one per class (python -m fer_fast.saliency --help)\n"
         "  selfcheck verify and time the fast backends here (python -m fer_fast selfcheck --help)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("train", "evaluate", "saliency", "selfcheck"):
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "train":
        from .train import main as tool
    elif argv[0] == "evaluate":
        from .evaluate import main as tool
    elif argv[0] == "selfcheck":
        from .selfcheck import main as tool
    else:
        from .saliency import main as tool
    return tool(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
