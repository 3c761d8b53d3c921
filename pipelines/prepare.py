"""`python pipelines/prepare.py [overrides]` from a checkout: the prepare stage, the same as `medseg prepare`."""

import sys

from medseg.cli import main

if __name__ == "__main__":
    main(["prepare", *sys.argv[1:]])
