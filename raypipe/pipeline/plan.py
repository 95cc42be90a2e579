"""Planning a run: which shards to read, what earlier runs already committed, whether OUTPUT fits.

A rerun of the same command resumes: shards with a completion marker are skipped, samples already
committed in fragments are not recomputed. A different configuration on the same OUTPUT is refused
unless the user asks to overwrite, because mixing two configurations would make the audit lie.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from raypipe.config import ConfigError, JobConfig
from raypipe.io.publish import delete, exists, publish_bytes, read_bytes
from raypipe.io.shards import expand_shards, shard_name
from raypipe.io.storage import filesystem, redact
from raypipe.layout import STATE_DIR, OutputLayout
from raypipe.logs import get_logger
from raypipe.pipeline.commit import committed_positions, list_fragments
from raypipe.pipeline.read import ShardWork

log = get_logger(__name__)

JOB_FILE = "job.json"
CONFIG_FILE = "config.yaml"


class OutputConflictError(ConfigError):
    """OUTPUT holds the results of a different configuration (or would overwrite an input)."""


def config_hash(config: JobConfig) -> str:
    """Fingerprint of everything that decides the output bytes (not how Ray runs the job)."""
    relevant: dict[str, Any] = {
        "input": list(config.input),
        "models": dataclasses.asdict(config.models),
        "method": dataclasses.asdict(config.method),
        "limits": dataclasses.asdict(config.limits),
        "audit": dataclasses.asdict(config.audit),
    }
    relevant["audit"].pop("key_file", None)
    relevant["models"].pop("device", None)  # where it runs does not change what it computes
    relevant["models"].pop("cache_dir", None)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


@dataclass
class Plan:
    config_hash: str
    shards: list[tuple[str, str]]  # (input URI, shard name) for every input shard, sorted
    done: list[str] = field(default_factory=list)  # shard names with a completion marker
    pending: list[ShardWork] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.shards]


def make_plan(config: JobConfig, layout: OutputLayout, overwrite: bool = False) -> Plan:
    """List the input shards, check OUTPUT, and find what earlier runs already committed."""
    uris = expand_shards(list(config.input), config.storage)
    shards = [(uri, shard_name(uri)) for uri in uris]
    _check_names(shards)
    _check_not_overwriting_inputs(shards, layout)
    digest = config_hash(config)
    _claim_output(layout, digest, [name for _, name in shards], overwrite)
    plan = Plan(config_hash=digest, shards=shards)
    for uri, name in shards:
        if exists(layout.fs, layout.done(name)):
            plan.done.append(name)
            continue
        seqs, _ = committed_positions(layout, name)
        plan.pending.append(ShardWork(uri=uri, name=name, committed=frozenset(seqs)))
    log.info(
        "%d input shards: %d done, %d to process (%d samples already committed)",
        len(shards),
        len(plan.done),
        len(plan.pending),
        sum(len(w.committed) for w in plan.pending),
    )
    return plan


def _check_names(shards: list[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for uri, name in shards:
        if name in seen:
            raise ConfigError(
                f"input: two shards share the name {name!r} ({redact(seen[name])} and {redact(uri)}); "
                "output shards keep their input names, so names must be unique"
            )
        seen[name] = uri


def _check_not_overwriting_inputs(shards: list[tuple[str, str]], layout: OutputLayout) -> None:
    for uri, name in shards:
        fs, path = filesystem(uri, layout.options)
        if type(fs) is type(layout.fs) and fs._strip_protocol(path) == layout.tar(name):
            raise OutputConflictError(f"output: {redact(layout.root)} would overwrite the input shard {redact(uri)}")


def _claim_output(layout: OutputLayout, digest: str, names: list[str], overwrite: bool) -> None:
    fs, job_path = layout.fs, layout.state(JOB_FILE)
    if exists(fs, job_path):
        previous = json.loads(read_bytes(fs, job_path)).get("config_hash")
        if previous != digest:
            if not overwrite:
                raise OutputConflictError(
                    f"output: {redact(layout.root)} holds results of a different configuration "
                    f"(config hash {str(previous)[:12]}, now {digest[:12]}); use another OUTPUT, or --overwrite "
                    "to delete those results and start again"
                )
            clear_output(layout, names)
    publish_bytes(fs, job_path, json.dumps({"config_hash": digest}, indent=2).encode())


def clear_output(layout: OutputLayout, names: list[str]) -> None:
    """Delete what raypipe wrote for these shards (and its state folder); nothing else is touched."""
    fs = layout.fs
    log.warning("overwrite: deleting earlier results for %d shards under %s", len(names), redact(layout.root))
    for name in names:
        for path in list_fragments(layout, name):
            delete(fs, path)
        for path in (layout.done(name), layout.tar(name), layout.audit(name)):
            delete(fs, path)
    state = layout.path(STATE_DIR)
    if fs.exists(state):
        fs.rm(state, recursive=True)
