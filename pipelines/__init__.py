"""Hydra entry points: one short module per stage, plus the ``medseg`` command (:mod:`pipelines.cli`).

``CONFIG_DIR`` is the repository's ``conf/`` folder (medseg is installed in editable mode, so
the configs stay editable next to the code).
"""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
