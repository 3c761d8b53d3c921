"""`python pipelines/train.py [overrides]` from a checkout: the train stage, the same as `medseg train`."""

import sys

from medseg.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
