"""``raypipe anonymize --dry-run``: what a run would do, read from INPUT and OUTPUT without writing anything.

It lists the input shards and OUTPUT's state (signed manifest, completion markers, committed fragments,
job file, lease) and names the stages and models the run would use. It does not start Ray, load a model,
take the lease or check a marker's hashes: the run itself checks every marker and fragment before it
trusts one, so a shard shown here as done may still be redone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from raypipe.config import JobConfig
from raypipe.io.shards import shard_name
from raypipe.io.storage import redact, redact_all
from raypipe.layout import OutputLayout, legacy_state


@dataclass
class DryRun:
    output: str
    shards: list[str]  # input shard names, sorted
    signed: list[str] = field(default_factory=list)  # in the signed manifest: skipped without reading a byte
    marked: list[str] = field(default_factory=list)  # finalized after the manifest: checked, then skipped
    partial: list[str] = field(default_factory=list)  # committed fragments: resumed
    removed: list[str] = field(default_factory=list)  # in OUTPUT, no longer in INPUT: the run refuses
    refusal: str | None = None  # why the run would stop before any work, if it would
    note: str | None = None
    lease: str = "free"
    stages: list[str] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def todo(self) -> list[str]:
        done = set(self.signed) | set(self.marked)
        return [name for name in self.shards if name not in done]

    def render(self) -> str:
        lines = [
            f"raypipe dry run -> {self.output} (nothing was written)",
            f"  input:   {len(self.shards)} shard(s)",
            f"  done:    {len(self.signed)} signed in the manifest, {len(self.marked)} finalized after it"
            " (checked before they are skipped)",
            f"  to do:   {len(self.todo)} shard(s), {len(self.partial)} of them with committed work to resume",
        ]
        lines += [f"           {name}" for name in self.todo[:10]]
        if len(self.todo) > 10:
            lines.append(f"           ... and {len(self.todo) - 10} more")
        lines.append(f"  lease:   {self.lease}")
        lines.append("  stages:  " + " -> ".join(self.stages))
        for name, source in self.models.items():
            lines.append(f"  model:   {name}: {source}")
        if self.note:
            lines.append(f"  note:    {self.note}")
        if self.refusal:
            lines.append(f"  REFUSED: {self.refusal}")
        return "\n".join(lines)


def dry_run(config: JobConfig, overwrite: bool = False) -> DryRun:
    """What ``run(config, overwrite)`` would do; raises as the run would for a bad INPUT."""
    from raypipe.audit.manifest import marked_shards, read_manifest
    from raypipe.pipeline.commit import list_fragments
    from raypipe.pipeline.plan import config_hash, configuration_change, output_settings
    from raypipe.pipeline.run import check_inputs_fit

    uris = config.input_shards()
    check_inputs_fit(config, uris)
    names = sorted(shard_name(uri) for uri in uris)
    layout = OutputLayout(config.output, config.storage)
    result = DryRun(output=redact(config.output), shards=names)
    result.stages, result.models, result.lease = _stages(config), _models(config), _lease(layout)
    legacy = legacy_state(layout)
    if legacy is not None:
        result.refusal = f"OUTPUT was written with raypipe's earlier layout ({legacy})"
        return result
    what = configuration_change(layout, config_hash(config), redact_all(output_settings(config)))
    if what is not None:
        if overwrite:
            result.note = f"--overwrite deletes OUTPUT's results of another configuration ({what}); all is redone"
        else:
            result.refusal = f"OUTPUT holds results of a different configuration ({what}); --overwrite deletes them"
        return result
    manifest = read_manifest(layout)
    signed = set((manifest or {}).get("shards") or {})
    marked = set(marked_shards(layout))
    inputs = set(names)
    result.signed = sorted(signed & inputs)
    result.marked = sorted((marked - signed) & inputs)
    result.removed = sorted((signed | marked) - inputs)
    result.partial = [name for name in result.todo if list_fragments(layout, name)]
    if result.removed and not overwrite:
        shown = ", ".join(result.removed[:5]) + (" ..." if len(result.removed) > 5 else "")
        result.refusal = f"OUTPUT holds shard(s) INPUT no longer lists: {shown}"
    return result


def _lease(layout: OutputLayout) -> str:
    from raypipe.pipeline.lease import describe_lease

    return describe_lease(layout, time.time())


def _stages(config: JobConfig) -> list[str]:
    """The stages after the read, with what each asks for (sized for a cluster with GPUs when the
    method needs one: the real sizes depend on the cluster the run finds)."""
    from raypipe.pipeline.run import job_stages

    cluster = {"CPU": 8.0} if config.method.classic else {"CPU": 8.0, "GPU": 1.0}
    shown = []
    for stage in job_stages(config, cluster):
        wants = f"{stage.resources.num_cpus:g} CPU"
        if stage.resources.num_gpus:
            wants += f", {stage.resources.num_gpus:g} GPU"
        shown.append(f"{stage.name} ({wants})")
    return ["Read", *shown, "Write"]


def _models(config: JobConfig) -> dict[str, Any]:
    models = config.models
    found: dict[str, Any] = {"analyzer": models.analyzer}
    if models.analyzer == "insightface":
        found["insightface"] = redact(models.insightface)
    if config.method.classic:
        found["method"] = f"{config.method.name} (no diffusion model)"
    elif models.preset == "tiny":
        found["diffusion"] = "tiny random models (tests only)"
    else:
        found["sdxl"], found["ip_adapter"] = redact(models.sdxl), redact(models.ip_adapter)
    found["recognizer (gate)"] = config.audit.recognizer
    return found
