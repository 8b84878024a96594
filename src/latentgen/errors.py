"""One exception hierarchy for the library. The CLI maps each class to an exit code.

Library code raises these and never calls ``sys.exit``; messages are one line, name the offending
value and say what to do instead.
"""

from __future__ import annotations


class LatentgenError(Exception):
    """Base class. A runtime failure: exit code 1."""

    exit_code = 1


class UsageError(LatentgenError):
    """The user asked for something invalid (bad size, bad seed, missing file): exit code 2."""

    exit_code = 2


class ModelNotFoundError(UsageError):
    """The model named by ``--model`` could not be found locally."""


class ModelLoadError(LatentgenError):
    """A model was found but could not be loaded (corrupt file, missing part, LFS pointer)."""


class UnsafeCheckpointError(LatentgenError):
    """A checkpoint would need pickle to load; refused: exit code 3."""

    exit_code = 3


class NonFiniteError(LatentgenError):
    """The model produced NaN or infinite values and the fp32 retry did not help."""


class OutputExistsError(UsageError):
    """The output file exists and ``--overwrite`` was not given."""
