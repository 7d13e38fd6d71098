"""Exception types shared by the core library.

Every error caused by the user's input derives from :class:`S2SInputError` and carries a one-line
message that names the offending file (or object) and the problem, so the CLI and the plugin can show it
as is, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class S2SError(Exception):
    """Base class of every error raised on purpose by spatial2sentence."""


class S2SInputError(S2SError):
    """Bad input: a file, a panel or a parameter that cannot be used. ``str(err)`` is one line."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class ImageReadError(S2SInputError):
    """An image file is missing, unreadable, corrupt or of an unusable shape."""


class MaskError(S2SInputError):
    """A segmentation mask is unusable (not integer, empty, wrong shape...)."""


class PanelError(S2SInputError):
    """A panel does not fit the image (count mismatch, duplicate names, missing columns)."""


class ModelInputError(S2SInputError):
    """Data that a model cannot read (no shared markers, unknown labels...)."""


def first_line(err: BaseException) -> str:
    """The first line of ``str(err)`` (at most 300 characters), or the exception's type name when it has
    no message: a library's multi-line error as part of a one-line message."""
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
