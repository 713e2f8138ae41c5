"""One exception type for everything the user can fix.

Every error the plugin raises for bad input is a :class:`TokenplugError` whose message is a
single line naming the file or key and what was expected. The CLI and the mergekit wrappers
turn it into ``Error: <message>`` and a non-zero exit without a traceback.
"""

from __future__ import annotations

import click


class TokenplugError(click.ClickException):
    """A user-facing error: one line, names the offending file/key and what was expected.

    It is a ``click.ClickException`` so that mergekit's own click commands (``mergekit-yaml``,
    ``mergekit-multi``) print it as ``Error: ...`` and exit 1 instead of a traceback; it also
    passes unchanged through pydantic validators (which only wrap ValueError/AssertionError).
    """

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None):
        message = " ".join(str(message).split())
        if where:
            message = f"{where}: {message}"
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class ConfigError(TokenplugError):
    """A recipe, parameter or command-line value is invalid."""


class InputError(TokenplugError):
    """A model, tokenizer or tensor given as input is unusable."""


def one_line_error(exc: BaseException) -> str:
    """An unexpected exception as one line: the file it names and what went wrong
    (a full-disk or permission error from deep inside a writer, say)."""
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename or ""
        return f"{name}: {exc.strerror}" if name else exc.strerror
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
