"""``python -m approxgnn ...``: the same command line as the ``approxgnn`` script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
