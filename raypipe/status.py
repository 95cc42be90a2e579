"""``raypipe status OUTPUT``: which shards are done or pending, and samples per status.

Reads only committed objects: the stored configuration, completion markers and fragments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from raypipe.config import ConfigError, build_config
from raypipe.io.publish import exists, read_bytes
from raypipe.io.shards import shard_name
from raypipe.io.storage import StorageOptions, redact
from raypipe.layout import CONFIG_FILE, STATE_DIR, OutputLayout, Tally, tally_from
from raypipe.pipeline.commit import committed_positions


@dataclass
class OutputStatus:
    output: str
    done: list[str] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # shard -> samples committed so far
    counts: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        total = len(self.done) + len(self.pending)
        lines = [f"{self.output}: {len(self.done)}/{total} shards done, {len(self.pending)} pending"]
        for status, count in sorted(self.counts.items()):
            lines.append(f"  {status:<12} {count}")
        for name, committed in sorted(self.pending.items())[:20]:
            lines.append(f"  pending {name}: {committed} samples committed")
        if len(self.pending) > 20:
            lines.append(f"  ... and {len(self.pending) - 20} more pending shards")
        return "\n".join(lines)


def tally(layout: OutputLayout, names: list[str]) -> Tally:
    """What the completion markers of ``names`` say (one small read per shard)."""
    return tally_from(names, layout.read_marker)


def output_status(output: str, options: StorageOptions | None = None) -> OutputStatus:
    layout = OutputLayout(output, options or StorageOptions())
    config_path = layout.state(CONFIG_FILE)
    if not exists(layout.fs, config_path):
        raise ConfigError(f"{redact(output)}: no raypipe run found (missing {STATE_DIR}/{CONFIG_FILE})")
    stored = yaml.safe_load(read_bytes(layout.fs, config_path))
    config = build_config(
        {k: stored[k] for k in ("input", "storage", "models", "method", "limits")}, {}, require_io=False
    )
    layout = OutputLayout(output, config.storage)
    markers = tally(layout, [shard_name(uri) for uri in config.input_shards()])
    return OutputStatus(
        output=redact(output),
        done=markers.done,
        pending={name: len(committed_positions(layout, name)[0]) for name in markers.incomplete},
        counts=markers.counts,
    )
