"""Error types.

Every error a user can cause (bad path, bad file, bad config value) is a :class:`MedsegError`:
the command-line layer prints its message as one line and exits non-zero, without a traceback.
Messages name the file or key and say what was expected and what was found.
"""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """Base class for errors caused by input data or configuration."""


class ConfigError(MedsegError):
    """A configuration value is missing or invalid."""


class DataError(MedsegError):
    """An input file is missing, unreadable or inconsistent.

    Args:
        path: the offending file or folder.
        problem: what is wrong with it, as a short phrase.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ArtifactError(MedsegError):
    """An exported model artifact is missing, incomplete or has been modified."""


class PartialFailure(MedsegError):
    """Some cases of a batch failed; the others finished and their outputs are kept."""
