"""Send a raypipe job to a running Ray cluster and follow it: ``raypipe submit`` and ``raypipe jobs``.

``raypipe submit --address http://HEAD:8265 --wait -- anonymize INPUT OUTPUT --config FILE`` becomes a
Ray job whose entrypoint is ``python jobs/anonymize.py INPUT OUTPUT --config FILE``. What travels with it:

- by default, a small working directory holding ``jobs/`` and the config file, plus the local ``raypipe``
  package as a ``py_modules`` entry, so the cluster runs exactly the code of this checkout;
- with ``--working-dir DIR``, the folder ``DIR`` instead (without caches, virtualenvs, VCS folders and
  its own ``raypipe/``: the package that travels is always the one running this command);
- with ``--no-package``, no ``raypipe`` package: the cluster image already has it installed.

Environment variables named with ``--env NAME`` are read from the local environment and set for the job.
Their values are never logged or printed. Ray keeps them in the job's metadata, visible on the
dashboard, so credentials belong to node roles / service accounts, not here; the audit signing key
(``RAYPIPE_AUDIT_KEY``, or any variable holding its value) is refused: it goes to the head node as a
file or a Kubernetes Secret instead (README.md, "The audit key on a cluster").

With ``--wait`` the job's logs stream to stdout and the exit status follows the job: 0 when it
succeeded, the job's own exit code (1, 2 or 3, see ``raypipe.cli``) or 1 when it failed, 3 when it was
stopped or its status is unknown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from raypipe.config import ConfigError
from raypipe.logs import get_logger

log = get_logger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ENTRYPOINT_SCRIPT = "jobs/anonymize.py"
JOB_COMMANDS = ("anonymize",)
STAGED_CONFIG_DIR = "configs"  # where a config from outside the checkout lands in the staged folder

# Never uploaded from a --working-dir folder (Ray also honours the folder's .gitignore files).
WORKING_DIR_EXCLUDES = (
    ".git/",
    ".venv/",
    "venv/",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    "*.egg-info/",
    "build/",
    "dist/",
    "out/",
    "samples/",
)
PACKAGE_EXCLUDES = ("__pycache__/", "*.pyc")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_LIKE = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE", re.IGNORECASE)

EXIT_OK, EXIT_FAILED, EXIT_OTHER = 0, 1, 3
_JOB_EXIT_CODES = frozenset({1, 2, 3})  # the raypipe CLI's own codes, passed through when a job fails
_POLL_S = 1.0


@dataclass(frozen=True)
class JobSubmission:
    """Everything Ray needs to start the job, before any upload happens.

    ``files`` maps paths inside the staged working directory to local files; it is empty when the
    user's own ``--working-dir`` is uploaded (then ``runtime_env["working_dir"]`` is already set).
    """

    entrypoint: str
    runtime_env: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    config_path: Path | None = None
    entrypoint_num_cpus: float = 0.0

    def describe(self) -> dict[str, Any]:
        """The runtime environment with environment-variable values hidden: safe to log or print."""
        env = dict(self.runtime_env)
        if "env_vars" in env:
            env["env_vars"] = {name: "<hidden>" for name in env["env_vars"]}
        return {"entrypoint": self.entrypoint, "runtime_env": env, "files": sorted(self.files)}


def default_address() -> str:
    """``$RAY_ADDRESS``, else the local dashboard."""
    return os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def find_source_root(candidates: Sequence[Path] | None = None) -> Path:
    """The raypipe checkout that holds ``jobs/anonymize.py``: next to the imported package, else here."""
    if candidates is None:
        import raypipe

        candidates = [Path(raypipe.__file__).resolve().parent.parent, Path.cwd()]
    for root in candidates:
        if (root / ENTRYPOINT_SCRIPT).is_file():
            return root.resolve()
    raise ConfigError(
        f"{ENTRYPOINT_SCRIPT} not found next to the installed raypipe package or in the current folder; "
        "run from a raypipe checkout or pass --working-dir DIR"
    )


def build_submission(
    job_args: Sequence[str],
    *,
    env_names: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    working_dir: str | os.PathLike[str] | None = None,
    package: bool = True,
    python: str = "python",
    entrypoint_num_cpus: float = 0.0,
    source_root: Path | None = None,
) -> JobSubmission:
    """Turn ``anonymize INPUT OUTPUT --config FILE [flags]`` into an entrypoint and a runtime env.

    Checks that files exist but reads none; raises :class:`ConfigError` for anything a user must fix.
    """
    _, args = _split_command(job_args)  # jobs/anonymize.py runs the one submittable command
    config_index, config = _find_config(args)
    runtime_env: dict[str, Any] = {}
    files: dict[str, Path] = {}
    if working_dir is not None:
        root = Path(working_dir).resolve()
        if not (root / ENTRYPOINT_SCRIPT).is_file():
            raise ConfigError(f"--working-dir {working_dir}: no {ENTRYPOINT_SCRIPT} in it")
        # The package that travels is always the one running this command (py_modules), or none.
        runtime_env.update(working_dir=str(root), excludes=[*WORKING_DIR_EXCLUDES, "/raypipe/"])
        config_in_job = _relative_inside(config, root) if config else None
        if config is not None and config_in_job is None:
            raise ConfigError(f"--config {config}: must be inside --working-dir {working_dir} to travel with the job")
    else:
        root = source_root or find_source_root()
        files = _staged_files(root)
        config_in_job = None
        if config is not None:
            config_in_job = _relative_inside(config, root) or f"{STAGED_CONFIG_DIR}/{config.name}"
            files[config_in_job] = config
        runtime_env["excludes"] = list(PACKAGE_EXCLUDES)
    if package:
        runtime_env["py_modules"] = [str(_package_dir())]
    env_vars = forwarded_env(env_names, os.environ if environ is None else environ)
    runtime_env["env_vars"] = {"PYTHONUNBUFFERED": "1", **env_vars}

    job_argv = list(args)
    if config_index is not None and config_in_job is not None:
        job_argv[config_index] = config_in_job
    entrypoint = shlex.join([python, ENTRYPOINT_SCRIPT, *job_argv])
    return JobSubmission(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        files=files,
        config_path=config,
        entrypoint_num_cpus=entrypoint_num_cpus,
    )


def forwarded_env(names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``{name: value}`` for each ``--env NAME``, read from ``environ``; errors name the variable only."""
    values: dict[str, str] = {}
    for name in names:
        if not _ENV_NAME.match(name):
            # Echo only what precedes any "=": the rest may be a value typed by mistake.
            raise ConfigError(
                f"--env {name.split('=', 1)[0]!r}: give a variable NAME (not NAME=VALUE); "
                "its value is read from the local environment"
            )
        if name not in environ:
            raise ConfigError(f"--env {name}: not set in the local environment")
        _refuse_audit_key(name, environ)
        if _SECRET_LIKE.search(name):
            log.warning(
                "--env %s: Ray shows job environment variables on its dashboard; prefer node roles or "
                "service accounts for credentials",
                name,
            )
        values[name] = environ[name]
    return values


def _refuse_audit_key(name: str, environ: Mapping[str, str]) -> None:
    """The signing key never travels in a job's environment: Ray keeps it in the job's metadata and
    shows it on the dashboard, and whoever reads it there can sign manifests for any OUTPUT."""
    from raypipe.audit.signing import KEY_ENV

    key = environ.get(KEY_ENV)
    if name != KEY_ENV and not (key and environ[name] == key):
        return
    alias = "" if name == KEY_ENV else f" (it holds the value of {KEY_ENV})"
    raise ConfigError(
        f"--env {name}{alias}: the audit signing key is not forwarded to a job, because Ray shows job "
        "environment variables on its dashboard. The job's driver signs on the cluster's head node: give the "
        "key to the head instead, as a file there named by audit.key_file (or --key-file), or on Kubernetes "
        "as RAYPIPE_AUDIT_KEY in the head container's env from a Secret (valueFrom.secretKeyRef); "
        "see 'The audit key on a cluster' in README.md"
    )


def _split_command(job_args: Sequence[str]) -> tuple[str, list[str]]:
    args = list(job_args)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise ConfigError("nothing to submit: give the job after --, e.g. -- anonymize INPUT OUTPUT --config FILE")
    if args[0] not in JOB_COMMANDS:
        raise ConfigError(f"only {' or '.join(JOB_COMMANDS)} can be submitted as a job, got {args[0]!r}")
    return args[0], args[1:]


def _find_config(args: list[str]) -> tuple[int | None, Path | None]:
    """Index of the config file's argument (rewritten to ``--config=PATH`` form if needed) and its path."""
    for i, arg in enumerate(args):
        if arg == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config: expected a file name after it")
            index, value = i + 1, args[i + 1]
        elif arg.startswith("--config="):
            args[i : i + 1] = ["--config", arg.split("=", 1)[1]]
            index, value = i + 1, args[i + 1]
        else:
            continue
        if "://" in value:
            raise ConfigError(f"--config {value}: give a local file; it is sent along with the job")
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"--config {value}: no such file")
        return index, path
    return None, None


def _relative_inside(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _staged_files(root: Path) -> dict[str, Path]:
    """Every file under the checkout's ``jobs/`` folder (entrypoints and example configs)."""
    jobs = root / "jobs"
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(jobs.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _package_dir() -> Path:
    import raypipe

    return Path(raypipe.__file__).resolve().parent


@contextmanager
def staged_runtime_env(submission: JobSubmission) -> Iterator[dict[str, Any]]:
    """The runtime env with ``working_dir`` set, copying ``files`` into a temporary folder if needed.

    Ray's client uploads the folder during ``submit_job``, so the folder may go once that returns.
    """
    runtime_env = dict(submission.runtime_env)
    if "working_dir" in runtime_env:
        yield runtime_env
        return
    with tempfile.TemporaryDirectory(prefix="raypipe-job-") as folder:
        for relative, source in submission.files.items():
            target = Path(folder, *relative.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        runtime_env["working_dir"] = folder
        yield runtime_env


# ------------------------------------------------------------------------------------ talking to Ray


def connect(address: str) -> Any:
    """A ``JobSubmissionClient`` for the dashboard at ``address``, with an error that says what to check."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError as exc:
        raise ConnectionError(
            f"cannot reach the Ray job API at {address} ({exc}); is the head's dashboard port (8265) "
            "reachable, e.g. through `kubectl port-forward` or `ray dashboard CLUSTER.yaml`?"
        ) from exc


def submit_job(
    address: str,
    job_args: Sequence[str],
    wait: bool = False,
    env_names: Sequence[str] = (),
    working_dir: str | os.PathLike[str] | None = None,
    *,
    package: bool = True,
    python: str = "python",
    entrypoint_num_cpus: float = 0.0,
    submission_id: str | None = None,
    client: Any = None,
    out: TextIO | None = None,
) -> int:
    """Submit ``anonymize ...`` as a Ray job; print its submission id; with ``wait``, stream its logs
    and return its exit status (see the module docstring). ``client`` replaces the real connection."""
    from raypipe.config import load_config

    out = out or sys.stdout
    submission = build_submission(
        job_args,
        env_names=env_names,
        working_dir=working_dir,
        package=package,
        python=python,
        entrypoint_num_cpus=entrypoint_num_cpus,
    )
    if submission.config_path is not None:
        load_config(str(submission.config_path), require_io=False)  # a bad file fails here, not on the cluster
    client = client if client is not None else connect(address)
    log.debug("job: %s", submission.describe())
    with staged_runtime_env(submission) as runtime_env:
        job_id = client.submit_job(
            entrypoint=submission.entrypoint,
            runtime_env=runtime_env,
            entrypoint_num_cpus=submission.entrypoint_num_cpus or None,
            submission_id=submission_id,
        )
    log.info("submitted %s: %s", job_id, submission.entrypoint)
    print(job_id, file=out, flush=True)
    if not wait:
        log.info("follow it with: raypipe jobs logs %s --follow --address %s", job_id, address)
        return EXIT_OK
    return follow_job(client, job_id, out)


def follow_job(client: Any, job_id: str, out: TextIO) -> int:
    """Stream the job's logs until it ends; its exit status (see :func:`exit_code_for`)."""
    try:
        printed = _tail_logs(client, job_id, out)
        status = _wait_terminal(client, job_id)
    except KeyboardInterrupt:
        log.warning("stopped following; job %s keeps running (raypipe jobs stop %s)", job_id, job_id)
        raise
    info = client.get_job_info(job_id)
    if printed == 0:  # nothing came over the stream: print what the job left
        out.write(client.get_job_logs(job_id))
        out.flush()
    code = exit_code_for(str(status), getattr(info, "driver_exit_code", None))
    message = _first_line(getattr(info, "message", None))
    log.info("job %s: %s%s", job_id, status, f" ({message})" if message and code else "")
    return code


def _tail_logs(client: Any, job_id: str, out: TextIO) -> int:
    """Characters printed from the live log stream; falls back to polling if the stream breaks."""
    printed = 0

    async def tail() -> None:
        nonlocal printed
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            printed += len(chunk)

    import aiohttp

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        log.warning("log stream of %s broke (%s); polling instead", job_id, exc)
        printed = _poll_logs(client, job_id, out, printed)
    return printed


def _poll_logs(client: Any, job_id: str, out: TextIO, printed: int) -> int:
    while True:
        terminal = _is_terminal(client.get_job_status(job_id))
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        if terminal:
            return printed
        time.sleep(_POLL_S)


def _wait_terminal(client: Any, job_id: str) -> Any:
    # The log stream closes when the driver exits; the status may follow a moment later.
    while True:
        status = client.get_job_status(job_id)
        if _is_terminal(status):
            return status
        time.sleep(_POLL_S)


def _first_line(message: str | None) -> str:
    """Ray appends the tail of the job's logs to a failed job's message; the first line says why."""
    lines = (message or "").strip().splitlines()
    return lines[0] if lines else ""


def _is_terminal(status: Any) -> bool:
    return str(status) in {"SUCCEEDED", "FAILED", "STOPPED"}


def exit_code_for(status: str, driver_exit_code: int | None = None) -> int:
    """0 for SUCCEEDED; for FAILED the job's own raypipe exit code (1, 2, 3) or 1; 3 for anything else."""
    if status == "SUCCEEDED":
        return EXIT_OK
    if status == "FAILED":
        return driver_exit_code if driver_exit_code in _JOB_EXIT_CODES else EXIT_FAILED
    return EXIT_OTHER


# ------------------------------------------------------------------------------------- commands


def cmd_submit(args: argparse.Namespace) -> int:
    return submit_job(
        args.address,
        args.job,
        wait=args.wait,
        env_names=args.env or (),
        working_dir=args.working_dir,
        package=not args.no_package,
        python=args.python,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        submission_id=args.submission_id,
    )


def cmd_jobs_list(args: argparse.Namespace) -> int:
    jobs = connect(args.address).list_jobs()
    jobs = sorted(jobs, key=lambda job: job.start_time or 0)
    print(f"{'SUBMISSION ID':<32} {'STATUS':<10} {'STARTED':<20} ENTRYPOINT")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        print(f"{job.submission_id or job.job_id or '-':<32} {job.status!s:<10} {started:<20} {job.entrypoint}")
    return EXIT_OK


def cmd_jobs_status(args: argparse.Namespace) -> int:
    info = connect(args.address).get_job_info(args.id)
    message = _first_line(info.message)
    print(f"{args.id}: {info.status}" + (f" ({message})" if message else ""))
    return EXIT_OK


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    client = connect(args.address)
    if args.follow:
        return follow_job(client, args.id, sys.stdout)
    sys.stdout.write(client.get_job_logs(args.id))
    return EXIT_OK


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    stopped = connect(args.address).stop_job(args.id)
    print(f"{args.id}: {'stop requested' if stopped else 'already finished'}")
    return EXIT_OK


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=default_address(),
        help=f"Ray dashboard URL of the cluster (default: $RAY_ADDRESS, else {DEFAULT_ADDRESS})",
    )


def add_submit_commands(subparsers: Any) -> None:
    """Register ``submit`` and ``jobs {list,status,logs,stop}`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "submit",
        help="run a job on a Ray cluster: raypipe submit --address URL [--wait] -- anonymize IN OUT --config F",
        description="Submit `anonymize INPUT OUTPUT [--config FILE] [flags]` (given after --) as a Ray job.",
    )
    _add_address(p)
    p.add_argument("--wait", action="store_true", help="stream the job's logs; exit with the job's status")
    p.add_argument(
        "--working-dir",
        metavar="DIR",
        help="upload DIR as the job's working directory (it must hold jobs/anonymize.py and the config); "
        "default: only jobs/ and the config file",
    )
    p.add_argument(
        "--no-package",
        action="store_true",
        help="do not send the local raypipe package: use the one installed in the cluster's image",
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="NAME",
        help="set NAME for the job, value taken from the local environment (repeatable; never printed)",
    )
    p.add_argument("--python", default="python", help="python executable on the cluster (default: python)")
    p.add_argument(
        "--entrypoint-num-cpus",
        type=float,
        default=0.0,
        help="CPUs reserved for the job's driver (default 0: it runs on the head and only schedules work)",
    )
    p.add_argument("--submission-id", help="a submission id of your choice (default: one from Ray)")
    p.add_argument("job", nargs=argparse.REMAINDER, help="-- anonymize INPUT OUTPUT --config FILE [flags]")
    p.set_defaults(func=cmd_submit)

    jobs = subparsers.add_parser("jobs", help="list, inspect, follow or stop Ray jobs on a cluster")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    q = jobs_sub.add_parser("list", help="jobs known to the cluster")
    _add_address(q)
    q.set_defaults(func=cmd_jobs_list)
    q = jobs_sub.add_parser("status", help="status of one job")
    q.add_argument("id", metavar="ID", help="submission id")
    _add_address(q)
    q.set_defaults(func=cmd_jobs_status)
    q = jobs_sub.add_parser("logs", help="logs of one job")
    q.add_argument("id", metavar="ID", help="submission id")
    q.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
    _add_address(q)
    q.set_defaults(func=cmd_jobs_logs)
    q = jobs_sub.add_parser("stop", help="stop one job")
    q.add_argument("id", metavar="ID", help="submission id")
    _add_address(q)
    q.set_defaults(func=cmd_jobs_stop)


__all__ = [
    "DEFAULT_ADDRESS",
    "JobSubmission",
    "add_submit_commands",
    "build_submission",
    "exit_code_for",
    "follow_job",
    "forwarded_env",
    "submit_job",
]
