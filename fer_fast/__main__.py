"""``python -m fer_fast {train,evaluate} ...``: the two command-line tools under one name."""
import sys

USAGE = ("usage: python -m fer_fast {train,evaluate} [options]\n"
         "  train     train the VGG (python -m fer_fast.train --help)\n"
         "  evaluate  ten-crop accuracy of a checkpoint (python -m fer_fast.evaluate --help)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("train", "evaluate"):
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "train":
        from .train import main as tool
    else:
        from .evaluate import main as tool
    return tool(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
