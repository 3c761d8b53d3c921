"""``python -m medseg <command> ...``: the same as the ``medseg`` command."""

from medseg.cli import main

if __name__ == "__main__":
    main()
