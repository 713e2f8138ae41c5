"""mergekit's own log lines that mislead in a plugin run, said plainly.

``mergekit.tokenizer.build`` warns ``token ' kubectl' has index 49152>49151 (padding?)`` for
every token a model's tokenizer has past the model's embedding rows: typically tokens a
recipe adds under ``tokens:``. mergekit then treats them as missing in that model, so with
``tokenizer.approximation`` the plugin estimates their rows. The warning becomes one INFO
line that says so (shown with ``-v``).
"""

from __future__ import annotations

import logging

BUILD_LOGGER = "mergekit.tokenizer.build"
PADDING = "(padding?)"
EXPLAINED = (
    "(past this model's embedding rows, e.g. a token the recipe adds: treated as missing in "
    "this model; with tokenizer.approximation mergekit-tokenplug estimates its row)"
)


class PaddingNote(logging.Filter):
    """Rewrites mergekit's ``(padding?)`` warning into an explained INFO record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if PADDING in message:
            record.msg, record.args = message.replace(PADDING, EXPLAINED), ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def apply() -> None:
    """Install the filter once (idempotent)."""
    logger = logging.getLogger(BUILD_LOGGER)
    if not any(isinstance(f, PaddingNote) for f in logger.filters):
        logger.addFilter(PaddingNote())
