"""Is finalize's memory bounded by a sample, not by the shard? Peak resident memory of the process
that finalizes one shard, for shards of growing size.

Each setting writes an input shard of ``--samples`` samples, each a ``--member-mb`` MB ``.bin`` member
(random bytes) and a small ``.json``; every other sample is released with new bytes for its ``.bin``
(as an anonymized image is) and the rest unchanged, read back from the input at finalize. Fragments
are committed as write tasks commit them (raypipe's real ``shard_tasks``, ``Decode``, ``slim`` and
``commit_fragment``, ``--per-fragment`` samples each). Then a fresh Python process runs raypipe's real
``finalize_shard`` on them and reports its peak resident memory (``VmHWM``) and how much it grew
over what the process held right before the call (imports, interpreter): the growth is what finalize
itself needs.

Baseline in the same run: the smallest shard. The claim is that growth stays flat as the shard grows
(a bounded number of row groups and one sample at a time), and that a 1.5 GB shard (150 x 10 MB, the
default full run) finalizes in a process below 1.2 GB resident.

    .venv/bin/python benchmarks/finalize_memory.py                  # 15, 60 and 150 samples of 10 MB
    .venv/bin/python benchmarks/finalize_memory.py --quick          # 8 and 48 samples of 4 MB (tests)
    .venv/bin/python benchmarks/finalize_memory.py --format parquet # the same as Parquet tables

With ``--format parquet`` the input is a table with a ``bin`` binary column and a ``json`` text column,
in row groups of ``--rows-per-group`` rows: finalize holds one row group (and its output members) at a
time, so growth is bounded by the row group, not by the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.report import write_report  # noqa: E402

SHARDS = {"webdataset": "part-00000.tar", "parquet": "part-00000.parquet"}

# Runs in a fresh interpreter: the peak it reports is finalize's alone.
CHILD = """
import json, sys, time
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import finalize_shard

def rss_mb(field):  # VmHWM: peak resident since exec (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field + " not in /proc/self/status")

before = rss_mb("VmRSS")
started = time.perf_counter()
marker = finalize_shard(OutputLayout(sys.argv[1]), sys.argv[2], source=sys.argv[3])
print(json.dumps({"before_mb": before, "peak_mb": rss_mb("VmHWM"), "seconds": time.perf_counter() - started,
                  "released": marker["released"]}))
"""


def samples(count: int, member_bytes: int) -> Iterator[Any]:
    from raypipe.io.tars import Sample

    for index in range(count):
        key = f"s{index:05d}"
        yield Sample(key, [(f"{key}.bin", os.urandom(member_bytes)), (f"{key}.json", b'{"i": %d}' % index)])


def write_table(path: Path, count: int, member_bytes: int, rows_per_group: int) -> None:
    """A Parquet table of ``count`` rows written one row group at a time (never the whole in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("bin", pa.binary()), ("json", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, rows_per_group):
            rows = range(start, min(count, start + rows_per_group))
            values = {"bin": [os.urandom(member_bytes) for _ in rows], "json": [json.dumps({"i": i}) for i in rows]}
            writer.write_table(pa.table(values, schema=schema))


def prepare(
    work: Path, count: int, member_bytes: int, per_fragment: int, shard: str, rows_per_group: int
) -> tuple[Path, Path]:
    """The input shard and an OUTPUT holding its committed fragments; returns (input, output)."""
    from raypipe.config import LimitsConfig
    from raypipe.io.storage import StorageOptions
    from raypipe.io.tars import write_tar
    from raypipe.layout import OutputLayout
    from raypipe.pipeline.commit import RunInfo, commit_fragment
    from raypipe.pipeline.read import ShardWork, shard_tasks
    from raypipe.pipeline.stages import Decode
    from raypipe.records import FaceRecord, FaceStatus, Status

    source, output = work / "in" / shard, work / "out"
    source.parent.mkdir(parents=True)
    if shard.endswith(".parquet"):
        write_table(source, count, member_bytes, rows_per_group)
    else:
        with open(source, "wb") as fh:
            write_tar(samples(count, member_bytes), fh)
    layout, run = OutputLayout(str(output)), RunInfo(config_hash="c" * 64, code_version="bench", method={})
    limits = LimitsConfig(max_member_bytes=max(member_bytes + 1, LimitsConfig().max_member_bytes))
    decode = Decode(limits)
    batch: list[Any] = []

    def commit() -> None:
        for task in decode(batch):
            task.slim()
            if task.end_of_shard:
                continue
            if task.seq % 2:  # released with new bytes, as an anonymized image is
                task.status = Status.ANONYMIZED
                task.faces = [FaceRecord(0, (0.0, 0.0, 8.0, 8.0), 1.0, FaceStatus.ANONYMIZED, attempts=1)]
                others = [task.unchanged(i) for i in range(1, len(task.members))]  # a table's json is no member
                task.out_members = [(task.members[0][0], os.urandom(member_bytes)), *others]
            else:  # released unchanged: read back from the input at finalize
                task.status = Status.NO_FACE
                task.out_members = [task.unchanged(i) for i in range(len(task.members))]
        commit_fragment(layout, shard, batch, run)
        batch.clear()

    for task in shard_tasks(ShardWork(str(source), shard), StorageOptions(), limits):
        batch.append(task)
        if len(batch) == per_fragment:
            commit()
    if batch:
        commit()
    return source, output


def measure(
    count: int, member_mb: float, per_fragment: int, work: Path, shard: str, rows_per_group: int
) -> dict[str, Any]:
    member_bytes = int(member_mb * 1024 * 1024)
    folder = work / f"n{count}"
    source, output = prepare(folder, count, member_bytes, per_fragment, shard, rows_per_group)
    shard_mb = source.stat().st_size / 2**20
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(output), shard, str(source)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    child = json.loads(done.stdout.strip().splitlines()[-1])
    written = (output / shard).stat().st_size / 2**20
    shutil.rmtree(folder)
    if child["released"] != count:
        raise RuntimeError(f"finalize released {child['released']} of {count} samples")
    return {
        "samples": count,
        "member_mb": member_mb,
        "input_shard_mb": round(shard_mb, 1),
        "output_shard_mb": round(written, 1),
        "process_before_mb": round(child["before_mb"], 1),
        "process_peak_mb": round(child["peak_mb"], 1),
        "finalize_growth_mb": round(child["peak_mb"] - child["before_mb"], 1),
        "seconds": round(child["seconds"], 2),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, nargs="+", default=[15, 60, 150], help="samples per shard, per setting")
    p.add_argument("--member-mb", type=float, default=10.0, help="size of each sample's .bin member")
    p.add_argument("--per-fragment", type=int, default=8, help="samples per committed fragment (a write batch)")
    p.add_argument("--format", choices=sorted(SHARDS), default="webdataset", help="a tar shard or a Parquet table")
    p.add_argument("--rows-per-group", type=int, default=4, help="rows per row group of a Parquet table")
    p.add_argument("--quick", action="store_true", help="8 and 48 samples of 4 MB (tests)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.member_mb = [8, 48], 4.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="raypipe-finalize-mem-") as work:
        for count in sorted(args.samples):
            row = measure(
                count, args.member_mb, args.per_fragment, Path(work), SHARDS[args.format], args.rows_per_group
            )
            rows.append(row)
            print(
                f"{row['input_shard_mb']:.0f} MB {args.format} shard ({count} x {args.member_mb:g} MB): finalize peak"
                f" {row['process_peak_mb']:.0f} MB resident, {row['finalize_growth_mb']:.0f} MB over the process"
                f" before it, {row['seconds']:.1f} s",
                flush=True,
            )
    first, last = rows[0], rows[-1]
    report = {
        "benchmark": "finalize_memory",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {"name": f"{platform.machine()} CPU ({os.cpu_count()} cores)", "python": platform.python_version()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "shard_ratio_largest_over_smallest": round(last["input_shard_mb"] / first["input_shard_mb"], 2),
        "growth_ratio_largest_over_smallest": round(
            last["finalize_growth_mb"] / max(first["finalize_growth_mb"], 1.0), 2
        ),
        "largest_peak_mb": last["process_peak_mb"],
    }
    name = "finalize_memory" if args.format == "webdataset" else f"finalize_memory_{args.format}"
    out = write_report(report, name, args.quick, args.out)
    print(
        f"shard {report['shard_ratio_largest_over_smallest']}x larger, finalize growth"
        f" {report['growth_ratio_largest_over_smallest']}x; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
