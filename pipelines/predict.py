"""`python pipelines/predict.py [overrides]` from a checkout: the predict stage, the same as `medseg predict`."""

import sys

from medseg.cli import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]])
