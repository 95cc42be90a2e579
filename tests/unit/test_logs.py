"""The libraries' own log lines are quiet unless asked for (``--verbose``, ``pipeline.library_logs``),
in the driver and in every stage's Ray worker."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import cast

import pytest

from raypipe.logs import LIBRARY_ENV, LIBRARY_LEVELS, quiet_libraries
from raypipe.pipeline.stage import Resources, Stage, StageWorker

# transformers says this where torchvision is missing (as here), each time such a processor is built.
NOTICE = "[transformers] `CLIPImageProcessor` requires torchvision"
BUILD = "from transformers import CLIPImageProcessor; CLIPImageProcessor()"


def python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in LIBRARY_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return done.stdout + done.stderr


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="the notice needs torchvision missing")
@pytest.mark.parametrize("imported_first", [False, True], ids=["before-import", "after-import"])
def test_quiet_libraries_silences_a_library_notice(imported_first: bool) -> None:
    before = "import transformers; transformers.logging.get_logger('x'); " if imported_first else ""
    assert NOTICE in python(BUILD)  # the notice is real here: a test that cannot fail proves nothing
    assert NOTICE not in python(f"{before}from raypipe.logs import quiet_libraries; quiet_libraries(); {BUILD}")


def test_verbose_shows_the_library_lines() -> None:
    from raypipe.cli import anonymize_config, build_parser

    for flags, shown in ((["-v"], True), ([], False)):
        args = build_parser().parse_args([*flags, "anonymize", "in.tar", "/out"])
        assert anonymize_config(args).pipeline.library_logs is shown


class Quiet(Stage):
    name = "Quiet"

    def setup(self) -> None:
        self.levels = {name: logging.getLogger(name).level for name in LIBRARY_LEVELS}
        super().setup()


@pytest.fixture
def loud(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The library loggers at NOTSET and their variables unset; both restored afterwards (this
    process's loggers are shared by every test)."""
    saved = {name: logging.getLogger(name).level for name in LIBRARY_LEVELS}
    for name in LIBRARY_ENV:
        monkeypatch.setenv(name, "")  # recorded, so that the delete is undone too
        monkeypatch.delenv(name)
    for name in LIBRARY_LEVELS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_a_stage_worker_quiets_the_libraries_before_its_setup(loud: None) -> None:
    kept = Quiet(Resources(1), 1)  # library_logs True (outside a job): a worker leaves them as they are
    assert set(cast(Quiet, StageWorker(kept).stage).levels.values()) == {logging.NOTSET}
    stage = Quiet(Resources(1), 1)
    stage.library_logs = False  # as job_stages sets it from pipeline.library_logs
    assert (
        cast(Quiet, StageWorker(stage).stage).levels == LIBRARY_LEVELS
        and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    )


def test_ray_data_keeps_its_warnings_on_the_console_and_everything_in_its_file(loud: None) -> None:
    import ray.data  # noqa: F401 - sets up Ray Data's loggers

    handlers = {h.get_name(): h for h in logging.getLogger("ray.data").handlers}
    saved = {name: h.level for name, h in handlers.items()}
    try:
        quiet_libraries()
        assert handlers["console"].level == logging.WARNING and handlers["file"].level == saved["file"]
    finally:
        for name, level in saved.items():
            handlers[name].setLevel(level)


@pytest.mark.parametrize("library_logs", [False, True])
def test_every_stage_of_a_job_carries_the_setting(library_logs: bool) -> None:
    from raypipe.config import JobConfig, PipelineConfig
    from raypipe.pipeline.run import job_stages

    config = JobConfig(input=("in.tar",), output="/out", pipeline=PipelineConfig(library_logs=library_logs))
    assert {stage.library_logs for stage in job_stages(config, {"CPU": 2.0})} == {library_logs}
