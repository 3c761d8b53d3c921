"""The house rules of docs/architecture.md, read from the source: which room may import which, and
no function longer than a screen."""

from __future__ import annotations

import ast

import pytest

from conftest import REPO

PACKAGE = REPO / "medseg"
MAX_FUNCTION_LINES = 60

#: room -> rooms it must never import (see docs/architecture.md for the allowed arrows).
FORBIDDEN = {
    "models": ("medseg.data", "medseg.engine", "medseg.inference", "medseg.stages", "medseg.export",
               "medseg.metrics", "medseg.report"),
    "data": ("medseg.engine", "medseg.inference", "medseg.stages", "medseg.export", "medseg.report"),
    "metrics": ("medseg.engine", "medseg.inference", "medseg.stages", "medseg.export"),
    "inference": ("medseg.engine", "medseg.stages", "medseg.metrics", "medseg.report"),
    "export": ("medseg.engine", "medseg.stages"),
    "engine": ("medseg.stages", "medseg.export", "medseg.report"),
    "report": ("medseg.engine", "medseg.stages", "medseg.inference", "medseg.export"),
    "utils": ("medseg.data", "medseg.models", "medseg.engine", "medseg.inference", "medseg.stages",
              "medseg.export", "medseg.metrics", "medseg.report"),
}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(REPO).as_posix(), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts]


def _imports(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def test_no_function_is_longer_than_a_screen():
    long = [f"{path}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for path, tree in _modules() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these: " + "; ".join(long)


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_only_along_the_allowed_arrows(room):
    bad = [f"{path} imports {m}" for path, tree in _modules() if path.startswith(f"medseg/{room}/")
           for m in _imports(tree) if m.startswith(FORBIDDEN[room])]
    assert not bad, "; ".join(bad)


def test_stages_are_wired_by_run_only():
    bad = [f"{path} imports {m}" for path, tree in _modules()
           if path.startswith("medseg/stages/") and not path.endswith(("/run.py", "/__init__.py"))
           for m in _imports(tree) if m.startswith("medseg.stages.") and m != "medseg.stages.common"]
    assert not bad, "; ".join(bad)


def test_the_library_never_starts_hydra():
    bad = [f"{path} imports {m}" for path, tree in _modules() if path != "medseg/cli.py"
           for m in _imports(tree) if m == "hydra.main" or m.startswith("hydra._internal")]
    assert not bad, "; ".join(bad)


def test_the_runtime_imports_neither_hydra_nor_monai_at_module_level():
    for name in ("runtime.py", "cli.py", "predictor.py", "sliding_window.py", "targets.py", "precision.py"):
        tree = ast.parse((PACKAGE / "inference" / name).read_text(encoding="utf-8"))
        top = [m for node in tree.body for m in _imports(ast.Module(body=[node], type_ignores=[]))]
        assert not [m for m in top if m.split(".")[0] in ("hydra", "omegaconf", "monai")], name


#: module -> heavy packages its import must not load (start-up of every medseg process; ~100 in the suite)
LIGHT = {
    "medseg.cli": ("torch", "monai", "matplotlib"),  # `medseg <stage> --cfg job`, usage, typos
    "medseg.stages": ("torch", "monai", "matplotlib"),  # a stage's module is imported when it runs
    "medseg.stages.prepare": ("monai", "matplotlib"),  # preparing data needs no network
    "medseg.stages.predict": ("monai", "matplotlib"),  # the artifact runs MONAI-free
    "medseg.stages.train": ("ignite", "optuna"),  # MONAI imports these whenever they are installed
}


@pytest.mark.parametrize("module", sorted(LIGHT))
def test_start_up_imports_only_what_the_command_needs(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print(' '.join(m for m in {LIGHT[module]!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"importing {module} loads {proc.stdout.strip()}"
