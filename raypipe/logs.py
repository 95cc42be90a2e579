"""One place that hands out loggers, so every module logs under the ``raypipe`` namespace."""

from __future__ import annotations

import logging


def get_logger(name: str) -> logging.Logger:
    """Return the logger for a raypipe module (``name`` is usually ``__name__``)."""
    if not name.startswith("raypipe"):
        name = f"raypipe.{name}"
    return logging.getLogger(name)


def configure_logging(verbose: bool = False) -> None:
    """Console logging for the CLI and job entrypoints (libraries never call this)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
