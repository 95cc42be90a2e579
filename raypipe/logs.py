"""One place that hands out loggers, so every module logs under the ``raypipe`` namespace, and one
place that quiets the libraries raypipe runs on."""

from __future__ import annotations

import logging
import os

# Libraries whose INFO and WARNING lines speak of their own internals (a missing optional backend, a
# deprecation) rather than of the job, and the level kept of each unless ``--verbose``
# (pipeline.library_logs).
LIBRARY_LEVELS = {
    "ray.data._internal.progress": logging.ERROR,  # "Progress bars disabled": what --no-progress asked for
    "transformers": logging.ERROR,
    "diffusers": logging.ERROR,
    "huggingface_hub": logging.ERROR,
    "urllib3": logging.ERROR,
    "botocore": logging.ERROR,
    "s3fs": logging.ERROR,
}
# Ray Data's console keeps its warnings (they name stalls, such as a pool without CPUs), not its INFO
# lines (the execution plan, dataset registrations); its session file ray-data.log keeps everything.
RAY_DATA_CONSOLE_LEVEL = logging.WARNING
# The same for libraries that read their level from the environment when they are first imported.
LIBRARY_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error"}


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


def quiet_libraries() -> None:
    """Keep the libraries at :data:`LIBRARY_LEVELS` in this process (the driver, and each Ray worker
    before its stage loads models). A variable the user set is left as it is."""
    for name, value in LIBRARY_ENV.items():
        os.environ.setdefault(name, value)
    for name, level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    for handler in logging.getLogger("ray.data").handlers:  # set up by Ray Data when it is imported
        if handler.get_name() == "console":
            handler.setLevel(RAY_DATA_CONSOLE_LEVEL)
