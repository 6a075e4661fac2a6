"""The error of the data layer: input that cannot be read.

It lives apart from the data-set interface so that the lowest modules (`patchmix.data.audio`)
can raise it without importing the readers above them.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input that cannot be read; the message names the file (and line) and the problem."""
