"""Planning a run: which shards to read, what earlier runs already committed, whether OUTPUT fits.

A rerun of the same command resumes: shards with a completion marker are skipped, samples already
committed in fragments are not recomputed. A different configuration on the same OUTPUT is refused
unless the user asks to overwrite, because mixing two configurations would make the audit lie.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from raypipe.audit.manifest import ManifestError, entry_from_files, marked_shards
from raypipe.config import ConfigError, JobConfig
from raypipe.io.concurrent import map_bounded
from raypipe.io.filetrees import is_files_group, split_group
from raypipe.io.identity import object_identity, same_object
from raypipe.io.publish import delete, exists, publish_bytes, read_bytes
from raypipe.io.shards import shard_name
from raypipe.io.storage import filesystem, is_within, redact, redact_all
from raypipe.layout import (
    CONFIG_FILE,
    JOB_FILE,
    RUNS_DIR,
    STATE_DIR,
    OutputLayout,
    delete_output,
    legacy_state,
    shard_of_stem,
    stems_uniquely,
)
from raypipe.logs import get_logger
from raypipe.pipeline.commit import committed_positions, list_fragments
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.read import ShardWork

log = get_logger(__name__)


class OutputConflictError(ConfigError):
    """OUTPUT holds the results of a different configuration (or would overwrite an input)."""


def output_settings(config: JobConfig) -> dict[str, Any]:
    """Everything that decides the output bytes of a shard (not how Ray runs the job, nor which shards).

    The input list is not one of them: the set of input shards may grow under one configuration, and
    each shard is pinned by its own input (a changed or removed one is refused by name, see make_plan).
    """
    relevant: dict[str, Any] = {
        "models": dataclasses.asdict(config.models),
        "method": dataclasses.asdict(config.method),
        "limits": dataclasses.asdict(config.limits),
        "audit": dataclasses.asdict(config.audit),
        "utility": dataclasses.asdict(config.utility),  # its flags are part of the audit records
        "encode": dataclasses.asdict(config.encode),
        # Samples per batch decide which faces share a UNet batch, and batched inference is not bit-exact
        # across batch shapes: a resume with another batch size would mix two kinds of output bytes.
        # Actor counts, resources and progress bars only decide where and when work runs.
        "pipeline": {"batch_size": config.pipeline.batch_size},
    }
    relevant["audit"].pop("key_file", None)
    relevant["audit"].pop("anchor", None)  # where the evidence is pinned does not change the output
    relevant["models"].pop("device", None)  # where it runs does not change what it computes
    relevant["models"].pop("cache_dir", None)
    return relevant


def config_hash(config: JobConfig) -> str:
    """Fingerprint of :func:`output_settings`: two runs may share an OUTPUT only when theirs are equal."""
    return hashlib.sha256(json.dumps(output_settings(config), sort_keys=True).encode()).hexdigest()


def changed_settings(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``section.key: old -> new`` for every setting that differs (nested mappings flattened); a
    setting only one side has (one that a newer raypipe added) shows as ``absent`` on the other."""
    changes = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_settings(old, new, f"{prefix}{key}.")
        elif old != new or (key in before) != (key in now):
            was = repr(old) if key in before else "absent"
            becomes = repr(new) if key in now else "absent"
            changes.append(f"{prefix}{key}: {was} -> {becomes}")
    return changes


@dataclass
class Plan:
    config_hash: str
    shards: list[tuple[str, str]]  # (input URI, shard name) for every input shard, sorted
    done: list[str] = field(default_factory=list)  # shard names already finalized (signed or not)
    pending: list[ShardWork] = field(default_factory=list)
    # Shards finalized by an earlier run that died before signing them: their checked entries.
    unsigned: dict[str, dict[str, Any]] = field(default_factory=dict)
    overwrite: bool = False  # this run replaces the signed results of another configuration

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.shards]


def make_plan(
    config: JobConfig,
    layout: OutputLayout,
    previous: dict[str, Any] | None = None,
    overwrite: bool = False,
    secret: bytes | None = None,
    uris: list[str] | None = None,
) -> Plan:
    """List the input shards, check OUTPUT, and find what earlier runs already committed.

    ``previous`` is OUTPUT's current signed manifest (checked by the caller): its shards are done, and
    no byte of their files is read. Shards finalized after it (a run that died before signing) are
    checked against their markers once. Every input is pinned by its identity (size, ETag or mtime):
    committed work of an input that changed since is dropped and the shard restarts, and a signed
    shard whose input changed stops the run. With ``secret`` (the run's fragment key) only fragments
    and markers it authenticates count: anything planted under OUTPUT without the key is ignored.
    ``uris``: the input shards, when the caller already expanded ``config.input``.
    """
    uris = uris if uris is not None else config.input_shards()
    shards = [(uri, shard_name(uri)) for uri in uris]
    _check_trees_apart(shards)
    _check_names(shards)
    _check_not_overwriting_inputs(shards, layout)
    _check_current_layout(layout)
    digest = config_hash(config)
    signed = previous["shards"] if previous else {}
    # One listing instead of one request per input shard (10^5 shards at 20 ms each: half an hour).
    with_markers = set(marked_shards(layout))
    names = {name for _, name in shards}
    settings = redact_all(output_settings(config))
    removed = sorted((set(signed) | with_markers) - names)
    everything = sorted(names | set(signed) | with_markers)
    identities = dict(zip(uris, map_bounded(lambda uri: object_identity(uri, config.storage), uris)))
    changed = [name for uri, name in shards if name in signed and _input_changed(signed[name], identities[uri])]
    clear = overwrite and bool(removed or changed)  # --overwrite starts again: the input shrank or changed
    overwrote = _claim_output(layout, digest, settings, everything, overwrite, clear=clear)
    if overwrote:
        signed, with_markers = {}, set()
    else:
        _check_none_removed(layout, removed)
    plan = Plan(config_hash=digest, shards=shards, overwrite=overwrote)
    source = config.method.attribute_source
    prompt_column = source.column if source is not None else None  # read with each table's rows
    for uri, name in shards:  # before anything is dropped: a changed signed input stops the run
        if name in signed:
            _check_signed_input(name, signed[name], identities[uri])
    with_fragments = _shards_with_fragments(layout)

    def look(shard: tuple[str, str]) -> dict[str, Any] | Positions | None:
        """The shard's storage requests: None when signed, its entry when finalized but not signed,
        else the positions committed (for its current input)."""
        uri, name = shard
        if name in signed:
            _drop_fragments(layout, name, with_fragments, "already finalized and signed")
            return None
        if name in with_markers:
            entry = _finalized_unsigned(layout, name, secret)
            if entry is not None and overwrite and _input_changed(entry, identities[uri]):
                log.warning("%s: its input changed since it was finalized; --overwrite: processing it again", name)
                delete_output(layout, name)
            elif entry is not None:
                _check_signed_input(name, entry, identities[uri], "finalized")
                _drop_fragments(layout, name, with_fragments, "already finalized")
                return entry
        if name not in with_fragments:
            return Positions()
        seqs, _, inputs = committed_positions(layout, name, True, secret=secret)
        if any(not same_object(json.loads(i), identities[uri]) for i in inputs):
            log.warning("%s: the input changed since its committed work was read; restarting that shard", name)
            _drop_fragments(layout, name, with_fragments, "read from another version of the input")
            return Positions()
        return seqs

    for (uri, name), found in zip(shards, map_bounded(look, shards)):
        if isinstance(found, Positions):
            plan.pending.append(
                ShardWork(uri=uri, name=name, committed=found, identity=identities[uri], attribute_column=prompt_column)
            )
            continue
        plan.done.append(name)
        if found is not None:
            plan.unsigned[name] = found
    log.info(
        "%d input shards: %d done, %d to process (%d samples already committed)",
        len(shards),
        len(plan.done),
        len(plan.pending),
        sum(len(w.committed) for w in plan.pending),
    )
    return plan


def _input_changed(entry: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether a shard's input is no longer the one its entry (or marker) pins."""
    pinned = entry.get("input")
    return isinstance(pinned, dict) and not same_object(pinned, identity)


def _check_signed_input(name: str, entry: dict[str, Any], identity: dict[str, Any], how: str = "signed") -> None:
    """Refuse a shard of OUTPUT whose input is no longer the one it was made from."""
    pinned = entry.get("input")
    if _input_changed(entry, identity):
        raise OutputConflictError(
            f"input: {identity['uri']} changed since {name} was anonymized and {how} (was {pinned}, now "
            f"{identity}); restore that input, or use --overwrite to start again"
        )


def _check_none_removed(layout: OutputLayout, removed: list[str]) -> None:
    """Refuse a run whose INPUT no longer lists a shard that OUTPUT holds: the set may grow, not shrink
    (OUTPUT's evidence would otherwise speak of shards that this configuration no longer covers)."""
    if removed:
        shown = ", ".join(removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        raise OutputConflictError(
            f"input: OUTPUT {redact(layout.root)} holds {shown}, which INPUT no longer lists; the input shards "
            "may grow between runs, not shrink: list them again, or use another OUTPUT, or --overwrite"
        )


def _finalized_unsigned(layout: OutputLayout, name: str, secret: bytes | None = None) -> dict[str, Any] | None:
    """The checked entry of ``name`` when it was finalized after the last signed manifest and its files
    still match; None (its files deleted) when they do not."""
    if not exists(layout.fs, layout.done(name)):
        return None
    try:
        return entry_from_files(layout, name, secret)
    except (ManifestError, OSError, ValueError, TypeError) as exc:
        log.warning("%s: finalized but never signed, and %s; processing it again", name, exc)
        delete_output(layout, name)
        return None


def _shards_with_fragments(layout: OutputLayout) -> set[str]:
    """Names (``<stem>.tar``) of the shards that have a fragments folder (one listing request)."""
    folder = layout.path(STATE_DIR, "fragments")
    if not exists(layout.fs, folder):
        return set()
    return {shard_of_stem(path.rstrip("/").rsplit("/", 1)[-1]) for path in layout.fs.ls(folder, detail=False)}


def _drop_fragments(layout: OutputLayout, name: str, with_fragments: set[str], why: str) -> None:
    if name not in with_fragments:
        return
    paths = list_fragments(layout, name)
    if paths:
        log.info("%s: dropping %d leftover fragment(s) (%s)", name, len(paths), why)
    for path in paths:
        delete(layout.fs, path)


def _check_names(shards: list[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for uri, name in shards:
        if not stems_uniquely(name):
            raise ConfigError(
                f"input: the shard {redact(uri)} is named {name!r}, which raypipe cannot tell from "
                f"{shard_of_stem(name.removesuffix('.tar'))!r} in its state; rename it"
            )
        if name in seen:
            raise ConfigError(
                f"input: two shards share the name {name!r} ({redact(seen[name])} and {redact(uri)}); "
                "output shards keep their input names, so names must be unique"
            )
        seen[name] = uri


def _trees(shards: list[tuple[str, str]]) -> list[str]:
    """The input folders read as trees of files."""
    return sorted({split_group(uri)[0] for uri, name in shards if is_files_group(name)})


def _check_trees_apart(shards: list[tuple[str, str]]) -> None:
    """Trees of files overlap neither each other nor, by a name that differs only by case, each
    other's output folders (one folder on macOS or Windows)."""
    folded: dict[str, str] = {}
    for _, name in shards:
        if is_files_group(name) and folded.setdefault(name.lower(), name) != name:
            raise ConfigError(
                f"input: the groups {folded[name.lower()]!r} and {name!r} differ only by case: their folders would"
                " be one on many filesystems (macOS, Windows); rename one"
            )
    for one, other in itertools.combinations(_trees(shards), 2):
        if is_within(one, other) or is_within(other, one):
            raise ConfigError(
                f"input: the folders {redact(one)} and {redact(other)} overlap; their files would be read and"
                " released twice: name one of them"
            )


def _check_not_overwriting_inputs(shards: list[tuple[str, str]], layout: OutputLayout) -> None:
    trees = _trees(shards)
    for root in trees:  # OUTPUT mirrors the tree: neither may hold the other
        if is_within(root, layout.root) or is_within(layout.root, root):
            raise OutputConflictError(
                f"output: {redact(layout.root)} and the input folder {redact(root)} overlap; a tree of files is"
                " mirrored to OUTPUT, so OUTPUT must lie outside it (and it outside OUTPUT)"
            )
    for uri, name in shards:
        fs, path = filesystem(uri, layout.options)
        if type(fs) is type(layout.fs) and fs._strip_protocol(path) == layout.tar(name):
            raise OutputConflictError(f"output: {redact(layout.root)} would overwrite the input shard {redact(uri)}")


def _check_current_layout(layout: OutputLayout) -> None:
    legacy = legacy_state(layout)
    if legacy is not None:
        raise OutputConflictError(
            f"output: {redact(layout.root)} was written with raypipe's earlier layout ({legacy}; its audits and "
            f"markers sit beside the tars); this raypipe keeps them under {STATE_DIR}/. Use another OUTPUT, or "
            "verify that one with the raypipe release that wrote it"
        )


def configuration_change(layout: OutputLayout, digest: str, settings: dict[str, Any]) -> str | None:
    """What differs between the configuration OUTPUT holds results of and this one (``digest`` and its
    redacted ``settings``): None when it is the same, or OUTPUT holds none; else the settings that
    changed (at most 8), or both hashes for a job file that does not keep its settings."""
    fs, job_path = layout.fs, layout.state(JOB_FILE)
    if not exists(fs, job_path):
        return None
    stored = json.loads(read_bytes(fs, job_path))
    previous = stored.get("config_hash")
    if previous == digest:
        return None
    changes = changed_settings(stored["settings"], settings) if "settings" in stored else []
    return "; ".join(changes[:8]) if changes else f"config hash {str(previous)[:12]}, now {digest[:12]}"


def _claim_output(
    layout: OutputLayout, digest: str, settings: dict[str, Any], names: list[str], overwrite: bool, clear: bool
) -> bool:
    """Check OUTPUT holds this configuration's results (or none); True when it was cleared: by
    ``overwrite`` for another configuration, or because ``clear`` (the input shrank, with --overwrite).

    The job file keeps the settings (credentials redacted) beside their hash, so that a refusal can name
    the settings that changed."""
    cleared = False
    if clear:
        clear_output(layout, names)
        cleared = True
    elif (what := configuration_change(layout, digest, settings)) is not None:
        if not overwrite:
            raise OutputConflictError(
                f"output: {redact(layout.root)} holds results of a different configuration ({what}); use "
                "another OUTPUT, or --overwrite to delete those results and start again"
            )
        clear_output(layout, names)
        cleared = True
    publish_bytes(
        layout.fs, layout.state(JOB_FILE), json.dumps({"config_hash": digest, "settings": settings}, indent=2).encode()
    )
    return cleared


def clear_output(layout: OutputLayout, names: list[str]) -> None:
    """Delete what raypipe wrote for these shards and its working state; nothing else is touched.

    The signed history (``manifest.json``, ``manifests/``) stays: the next manifest chains to it and
    records which entries the overwrite removed, so an overwrite is never mistaken for a rollback.
    """
    fs = layout.fs
    log.warning("overwrite: deleting earlier results for %d shards under %s", len(names), redact(layout.root))
    for name in names:
        for path in list_fragments(layout, name):
            delete(fs, path)
        delete_output(layout, name)
    for name in (CONFIG_FILE, RUNS_DIR):
        path = layout.state(name)
        if fs.exists(path):
            fs.rm(path, recursive=True)
