"""`python pipelines/evaluate.py [overrides]` from a checkout: the evaluate stage, the same as `medseg evaluate`."""

import sys

from medseg.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
