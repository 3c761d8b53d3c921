"""Error types.

Every error a user can cause (bad path, bad file, bad config value) is a :class:`MedsegError`:
the command-line layer prints its message as one line and exits non-zero, without a traceback.
Messages name the file or key and say what was expected and what was found.
"""

from __future__ import annotations

from pathlib import Path


def one_line(text: object) -> str:
    """``text`` as one line: newlines and runs of white space inside (library) messages folded."""
    return " ".join(str(text).split())


class MedsegError(Exception):
    """Base class for errors caused by input data or configuration.

    The message is always one line: newlines inside it (often from a library's message) are folded.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(one_line(a) if isinstance(a, str) else a for a in args))


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
        self.problem = one_line(problem)
        super().__init__(f"{path}: {self.problem}")


class InvalidCase(DataError):
    """A case that failed its checks. Every problem travels with it, as found (``problems``); the
    message is the first problem and a count of the others.

    Args:
        case: the case name.
        path: the case's first file (or its folder).
        problems: every problem found, each a one-line message naming its file.
    """

    def __init__(self, case: str, path: str | Path, problems: list[str]) -> None:
        self.case = case
        self.problems = [one_line(p) for p in problems] or [f"{case}: could not be loaded"]
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        self.path = Path(path)
        self.problem = self.problems[0] + more
        MedsegError.__init__(self, self.problem)

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (type(self), (self.case, self.path, self.problems))


class ArtifactError(MedsegError):
    """An exported model artifact is missing, incomplete or has been modified."""


class PartialFailure(MedsegError):
    """Some cases of a batch failed; the others finished and their outputs are kept."""


def failure_line(where: str | Path, error: BaseException) -> str:
    """One line describing an unexpected per-case failure, naming the file or case.

    A :class:`MemoryError` (which usually carries no message) reads ``out of memory``.
    """
    if isinstance(error, MemoryError):
        detail = f" ({one_line(error)})" if str(error).strip() else ""
        return f"{where}: out of memory while processing this case{detail}"
    if isinstance(error, MedsegError):
        return str(error)
    return f"{where}: {type(error).__name__}: {one_line(error)}"


def case_error(where: str | Path, error: BaseException) -> MedsegError:
    """``error`` as a :class:`MedsegError` (itself when it already is one), for per-case loops
    that catch memory exhaustion and report it in one line like any other bad case."""
    return error if isinstance(error, MedsegError) else MedsegError(failure_line(where, error))
