"""``python -m approxgnn`` (and ``torchrun … -m approxgnn``): the command line."""
import sys

from approxgnn.cli import main
from approxgnn.train.distributed import exit_rank, under_launcher

if __name__ == "__main__":
    code = main()
    if under_launcher():  # one rank of torchrun's: exit as the ranks of --nproc do
        exit_rank(code)
    sys.exit(code)
