"""The job's stages in this process, without Ray: read -> decode -> (detect + anonymize) -> compose
-> commit -> finalize -> signed manifest, as the tests that check whole outcomes need them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raypipe.audit.manifest import build_manifest, entry_from_marker, read_manifest, write_manifest
from raypipe.audit.signing import parse_key
from raypipe.config import AuditConfig, LimitsConfig
from raypipe.io.shards import shard_name
from raypipe.io.storage import StorageOptions
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import RunInfo, commit_fragment, finalize_shard
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.stages import Anonymize, Compose, Decode
from raypipe.pipeline.task import SampleTask

KEY = parse_key(b"0123456789abcdef0123456789abcdef", "test")


def run_stages(
    shard: Path | str,
    out: Path,
    anonymize: Anonymize,
    quarantine: Path | None = None,
    method: dict[str, Any] | None = None,
    attribute_column: str | None = None,
) -> None:
    """Every stage over ``shard`` into OUTPUT ``out``; ``method``: the run's method settings, as the
    audit records them (``to_dict(MethodConfig)``; none by default); ``attribute_column``: a table's
    column of attribute prompts, as the plan passes it (``column:NAME``). ``shard``: a tar or table, or
    the URI of a group of files (:mod:`raypipe.io.filetrees`)."""
    layout = OutputLayout(str(out))
    held = OutputLayout(str(quarantine)) if quarantine else None
    uri, name = str(shard), shard_name(str(shard))
    work = ShardWork(uri, name, attribute_column=attribute_column)
    tasks: list[SampleTask] = list(shard_tasks(work, StorageOptions(), LimitsConfig()))
    tasks = Compose(AuditConfig()).ready()(anonymize(Decode(LimitsConfig())(tasks)))
    run_info = RunInfo(config_hash="c" * 64, code_version="test", method=method or {}, quarantine=held)
    commit_fragment(layout, name, tasks, run_info)
    marker = finalize_shard(layout, name, held, source=uri)
    run = {"config_hash": "c" * 64, "code_version": "test"}
    added = {name: entry_from_marker(marker)}
    write_manifest(layout, build_manifest(read_manifest(layout), added, run), KEY)
