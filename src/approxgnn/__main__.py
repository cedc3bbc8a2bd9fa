"""``python -m approxgnn`` (and ``torchrun … -m approxgnn``): the command line."""
import sys

from approxgnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
