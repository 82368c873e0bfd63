"""Error types that map to the CLI's exit codes.

Anything derived from :class:`UsageError` is the user's input being wrong (exit 2, message
only); :class:`MdfrError` is a runtime failure we can explain (exit 1, message only); anything
else is a bug (exit 1 with a traceback).
"""

from __future__ import annotations


class MdfrError(Exception):
    """A runtime failure with a message a user can act on (exit code 1)."""

    exit_code = 1


class UsageError(MdfrError):
    """Bad input from the user: arguments, files, values (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A config or sweep file that does not validate.

    Args:
        path: dotted key inside the document (``model.pooling``), or "" for the whole document.
        message: what is wrong and what is allowed.
        source: the file the document came from, if any.
    """

    def __init__(self, path: str, message: str, source: str | None = None):
        self.path = path
        self.message = message
        self.source = source
        where = ": ".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {message}" if where else message)

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.path, self.message, source)


class DataError(UsageError):
    """Unusable input data: a corrupt image, a wrong folder layout, a missing file."""
