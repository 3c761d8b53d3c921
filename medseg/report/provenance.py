"""Where a result came from: code commit, library versions, machine, time."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("medseg", "torch", "monai", "numpy", "scipy", "nibabel", "pydicom", "hydra-core", "onnxruntime")


def code_commit() -> str:
    """The git commit of the medseg source tree (``-dirty`` with local changes), or why there is none."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def library_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def provenance() -> dict[str, object]:
    """Commit, versions, machine and UTC time."""
    return {"commit": code_commit(), "versions": library_versions(),
            "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
            "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}
