"""`python pipelines/run.py [overrides]` from a checkout: the run stage, the same as `medseg run`."""

import sys

from medseg.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
