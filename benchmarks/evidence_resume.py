"""What the evidence of a resume costs: a run that finalizes 1 shard of an OUTPUT holding N.

OUTPUT is built with raypipe's real finalize (``commit_fragment`` + ``finalize_shard``) from synthetic
faceless samples: N-1 shards signed by an earlier manifest, and one shard just finalized by the
resumed run. Two ways of writing the resumed run's manifest are measured in the same run:

- ``rehash`` (the baseline, what raypipe did before the signed history was the truth): every shard's
  entry is recomputed from its files under OUTPUT (tar and audit read and hashed), then signed;
- ``carry-over`` (now): the previous signed manifest is verified and its entries carried over; only
  the new shard's entry, computed at finalize from the bytes written, is added.

Reported per N: bytes of OUTPUT files opened for reading (each opened file counted whole: an upper
bound; Python's audit hook sees every ``open``), files opened, and seconds; the ratios baseline/now.

    .venv/bin/python benchmarks/evidence_resume.py [--shards 10 100] [--samples 20] [--member-kb 48]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raypipe.audit.manifest import (
    build_manifest,
    entry_from_files,
    entry_from_marker,
    read_signed_manifest,
    write_manifest,
)
from raypipe.audit.signing import parse_key
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import RunInfo, commit_fragment, finalize_shard
from raypipe.pipeline.task import SampleTask
from raypipe.records import Status

KEY = parse_key(os.urandom(32).hex().encode(), "benchmark")
RUN = {"config_hash": "b" * 64, "code_version": "benchmark"}
RESULTS = Path(__file__).parent / "results" / "evidence_resume.json"


class OpenedFiles:
    def __init__(self) -> None:
        self.root: str | None = None
        self.paths: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.root and event == "open" and isinstance(args[0], str) and args[0].startswith(self.root):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            if "r" in mode and os.path.isfile(args[0]):
                self.paths.append(args[0])


OPENED = OpenedFiles()


def finalized_shard(layout: OutputLayout, name: str, samples: int, member: bytes) -> dict[str, Any]:
    tasks = []
    for seq in range(samples):
        key = f"{name[:-4]}/{seq:06d}"
        members = [(f"{key}.jpg", member), (f"{key}.json", b'{"i": %d}' % seq)]
        task = SampleTask(shard=f"in/{name}", shard_name=name, seq=seq, key=key, members=members, input_sha256="")
        task.status, task.out_members = Status.NO_FACE, members
        tasks.append(task)
    tasks.append(SampleTask.end_marker(f"in/{name}", name, samples))
    commit_fragment(layout, name, tasks, RunInfo(config_hash=RUN["config_hash"], code_version="b", method={}))
    return finalize_shard(layout, name)


def measure(root: Path, step: Callable[[], Any]) -> dict[str, float]:
    OPENED.root, OPENED.paths = str(root), []
    started = time.perf_counter()
    step()
    seconds = time.perf_counter() - started
    OPENED.root = None
    return {
        "seconds": round(seconds, 4),
        "files_opened": len(OPENED.paths),
        "bytes_opened": sum(os.path.getsize(p) for p in OPENED.paths),
    }


def rehash(layout: OutputLayout, names: list[str], new: dict[str, Any]) -> None:
    """The baseline: every entry recomputed from the files under OUTPUT."""
    previous = read_signed_manifest(layout, KEY)
    entries = {name: entry_from_files(layout, name) for name in names}
    write_manifest(layout, build_manifest(previous, entries, dict(RUN), overwrite="benchmark: rehash"), KEY)


def carry_over(layout: OutputLayout, names: list[str], new: dict[str, Any]) -> None:
    """Now: the signed entries carried over, the new shard's entry taken from its finalize."""
    previous = read_signed_manifest(layout, KEY)
    write_manifest(layout, build_manifest(previous, {names[-1]: entry_from_marker(new)}, dict(RUN)), KEY)


def one_size(shards: int, samples: int, member: bytes, folder: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"shards": shards}
    for approach in ("rehash", "carry-over"):
        root = folder / f"{approach}-{shards}"
        layout = OutputLayout(str(root))
        names = [f"data-{i:05d}.tar" for i in range(shards)]
        earlier = {name: entry_from_marker(finalized_shard(layout, name, samples, member)) for name in names[:-1]}
        write_manifest(layout, build_manifest(None, earlier, dict(RUN)), KEY)
        new = finalized_shard(layout, names[-1], samples, member)

        step = rehash if approach == "rehash" else carry_over
        results[approach] = measure(root, functools.partial(step, layout, names, new))
        results["output_bytes"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    for name in ("seconds", "bytes_opened"):
        now = max(results["carry-over"][name], 1e-9)
        results[f"{name}_ratio"] = round(results["rehash"][name] / now, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--samples", type=int, default=20, help="samples per shard")
    parser.add_argument("--member-kb", type=int, default=48, help="size of each sample's image member")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    member = os.urandom(args.member_kb * 1024)
    rows = []
    with tempfile.TemporaryDirectory(prefix="raypipe-evidence-") as folder:
        for shards in args.shards:
            row = one_size(shards, args.samples, member, Path(folder))
            rows.append(row)
            print(
                f"N={shards:>4}: rehash {row['rehash']['bytes_opened'] / 2**20:8.1f} MiB read, "
                f"{row['rehash']['seconds']:.3f}s | carry-over {row['carry-over']['bytes_opened'] / 2**10:6.1f} KiB "
                f"read, {row['carry-over']['seconds']:.3f}s | ratio bytes {row['bytes_opened_ratio']}x, "
                f"time {row['seconds_ratio']}x"
            )
    record = {
        "benchmark": "evidence_resume",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "samples_per_shard": args.samples,
        "member_bytes": len(member),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
