"""The examples in medseg's docstrings run and print what they show.

Every module under ``medseg/`` whose source holds a ``>>>`` example is found here, so a new
example is checked without being listed; examples that need files or a trained model say
``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medseg"
MODULES = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
                 for p in PACKAGE.rglob("*.py") if ">>> " in p.read_text(encoding="utf-8"))


def test_the_examples_are_found():
    assert "medseg.engine.schedule" in MODULES and "medseg.inference.runtime" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    found = sum(len(t.examples) for t in doctest.DocTestFinder().find(module))
    assert found > 0, f"{name}: its >>> examples are not found by doctest (not in a docstring?)"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"
