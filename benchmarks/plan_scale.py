"""Does planning stay flat per shard as the input grows? The driver's planning over 10^2..10^4 input
shards on S3 with a round trip of 20 ms per request.

The store is moto's S3 server on loopback behind the tests' fault proxy
(``tests/integration/faulty_proxy.py``) with no faults and ``--latency-ms`` added to every request, as a
remote bucket would. Each setting plans a fresh OUTPUT with raypipe's real ``make_plan`` (expand the
input pattern, check the names, claim OUTPUT, pin every input's identity, list markers and fragments,
look at every shard) and reports seconds and requests per shard.

Baseline in the same run: the same planning with one request in flight at a time (``map_bounded`` held
to 1), on the smallest setting: what planning cost before it ran its requests concurrently.

Start it only in a loopback-only network namespace:

    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh .venv/bin/python benchmarks/plan_scale.py
    ... benchmarks/plan_scale.py --quick        # 100 and 300 shards (tests)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.report import write_report  # noqa: E402

BUCKET = "raypipe-plan-scale"


def fake_credentials() -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )


def upload_shards(server: str, count: int) -> None:
    """``in/part-00000.tar`` .. : tiny one-sample shards, put straight to the server (no latency)."""
    import boto3

    from raypipe.io.tars import Sample, tar_bytes

    client = boto3.client("s3", endpoint_url=server)
    existing = sum(
        page.get("KeyCount", 0)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="in/")
    )
    data = tar_bytes([Sample("a", [("a.txt", b"no face")])])
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda i: client.put_object(Bucket=BUCKET, Key=f"in/part-{i:05d}.tar", Body=data),
                range(existing, count),
            )
        )


def plan_once(proxy: Any, count: int, label: str, sequential: bool) -> dict[str, Any]:
    import raypipe.pipeline.plan as plan_module
    from raypipe.config import build_config
    from raypipe.io.concurrent import REQUESTS_IN_FLIGHT, map_bounded
    from raypipe.layout import OutputLayout

    output = f"s3://{BUCKET}/out-{label}"
    config = build_config(
        {
            "input": f"s3://{BUCKET}/in/part-{{00000..{count - 1:05d}}}.tar",
            "output": output,
            "storage": {"endpoint_url": proxy.url},
        },
        {},
    )
    layout = OutputLayout(output, config.storage)
    before = sum(proxy.counts.values())
    if sequential:
        plan_module.map_bounded = lambda fn, items: map_bounded(fn, items, limit=1)  # type: ignore[assignment]
    started = time.perf_counter()
    try:
        plan = plan_module.make_plan(config, layout)
    finally:
        plan_module.map_bounded = map_bounded
    seconds = time.perf_counter() - started
    requests = sum(proxy.counts.values()) - before
    if len(plan.pending) != count:
        raise RuntimeError(f"planned {len(plan.pending)} shards, expected {count}")
    return {
        "shards": count,
        "requests_in_flight": 1 if sequential else REQUESTS_IN_FLIGHT,
        "seconds": round(seconds, 3),
        "ms_per_shard": round(1000 * seconds / count, 3),
        "requests": requests,
        "requests_per_shard": round(requests / count, 3),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--latency-ms", type=float, default=20.0, help="added to every request")
    p.add_argument("--quick", action="store_true", help="100 and 300 shards (tests)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.shards = [100, 300]
    return args


def main(argv: list[str] | None = None) -> int:
    import boto3

    from raypipe.io.concurrent import REQUESTS_IN_FLIGHT
    from tests.integration.faulty_proxy import FaultyProxy
    from tests.integration.s3server import moto_server

    args = parse_args(argv)
    fake_credentials()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="raypipe-planscale-") as work, moto_server(Path(work) / "rec") as server:
        boto3.client("s3", endpoint_url=server).create_bucket(Bucket=BUCKET)
        proxy = FaultyProxy(server, error_500=None, error_503=None, stall=None, latency_s=args.latency_ms / 1000)
        with proxy.running():
            smallest = min(args.shards)
            upload_shards(server, smallest)
            baseline = plan_once(proxy, smallest, "sequential", sequential=True)
            print(f"one request at a time, {smallest} shards: {baseline['ms_per_shard']:.1f} ms per shard", flush=True)
            for count in sorted(args.shards):
                upload_shards(server, count)
                row = plan_once(proxy, count, f"n{count}", sequential=False)
                row["speedup_over_sequential"] = round(baseline["ms_per_shard"] / row["ms_per_shard"], 2)
                rows.append(row)
                print(
                    f"{count} shards: {row['seconds']:.2f} s, {row['ms_per_shard']:.2f} ms and"
                    f" {row['requests_per_shard']:.2f} requests per shard ({row['speedup_over_sequential']}x"
                    " the sequential baseline)",
                    flush=True,
                )
    flat = round(rows[-1]["ms_per_shard"] / rows[0]["ms_per_shard"], 3)
    report = {
        "benchmark": "plan_scale",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {
            "name": f"{platform.machine()} CPU ({os.cpu_count()} cores); moto S3 server on loopback behind a"
            f" proxy adding {args.latency_ms:g} ms per request",
            "python": platform.python_version(),
        },
        "settings": {"shards": args.shards, "latency_ms": args.latency_ms, "quick": args.quick},
        "requests_in_flight": REQUESTS_IN_FLIGHT,
        "sequential_baseline": baseline,
        "rows": rows,
        "ms_per_shard_largest_over_smallest": flat,
    }
    out = write_report(report, "plan_scale", args.quick, args.out)
    print(f"ms per shard at {rows[-1]['shards']} over {rows[0]['shards']} shards: {flat}x; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
