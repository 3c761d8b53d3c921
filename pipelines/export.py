"""`python pipelines/export.py [overrides]` from a checkout: the export stage, the same as `medseg export`."""

import sys

from medseg.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]])
