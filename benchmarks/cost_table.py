"""Build ``raypipe/cost_table.json``, the seconds per face that ``raypipe estimate`` prices, from the
benchmark results in ``benchmarks/results/``, each row with the device and the date it was measured.

    .venv/bin/python benchmarks/cost_table.py           # rewrite raypipe/cost_table.json
    .venv/bin/python benchmarks/cost_table.py --check   # exit 1 if it is not what the results give (tests)

Rows:

- ``measured``, Reverse Personalization: a ``core_gpu.py`` run on a CUDA device at full size (its
  fastest configuration per face size), at each profile's face size and steps. None so far: no GPU
  has run it.
- ``assumed``, Reverse Personalization: the FLOPs per face that ``core_gpu.py --count-only`` counted
  at full size (UNet loop with the LoRA fused, plus the VAE), at 45 % to 25 % of each GPU's dense
  16-bit peak. The MFU range is an assumption, not a measurement (BENCHMARKS.md, "Exact counts").
- ``measured``, classic methods: ``classic_cpu.py`` on the CPU it ran on, seconds per image.

The profiles are the example job files: production (``s3-gpu.yaml``), fast and preview.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLE = ROOT / "raypipe" / "cost_table.json"
PROFILES = {"production": "s3-gpu.yaml", "fast": "fast.yaml", "preview": "preview.yaml"}
MFU_ASSUMED = (0.45, 0.25)  # best and worst case of the range BENCHMARKS.md discusses; not measured
GPUS = {"H100 SXM": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense bf16 TFLOP/s (core_gpu.py)


def profiles() -> dict[str, tuple[int, int]]:
    found = {}
    for name, file in PROFILES.items():
        method = yaml.safe_load((ROOT / "jobs" / "configs" / file).read_text())["method"]
        found[name] = (int(method["face_size"]), int(method["num_steps"]))
    return found


def assumed_rows(profile_sizes: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    path = RESULTS / "core_gpu-count.json"
    counts = json.loads(path.read_text())["results"]
    rows = []
    for profile, (face_size, steps) in profile_sizes.items():
        (fused,) = [r for r in counts if r["fuse_lora"] and r["face_size"] == face_size]
        tflop = fused["tflop_per_face"][str(steps)] + fused["vae_flops_per_face"] / 1e12
        for gpu, peak in GPUS.items():
            best, worst = (round(tflop / (peak * mfu), 2) for mfu in MFU_ASSUMED)
            rows.append(
                {
                    "profile": profile,
                    "method": "reverse_personalization",
                    "face_size": face_size,
                    "num_steps": steps,
                    "device": gpu,
                    "seconds_per_face": [best, worst],
                    "kind": "assumed",
                    "basis": f"{tflop:,.0f} TFLOP per face, counted; at 45-25 % of {peak:g} TFLOP/s (assumed MFU)",
                    "source": "benchmarks/results/core_gpu-count.json",
                    "date": json.loads(path.read_text()).get("date"),
                }
            )
    return rows


def measured_gpu_rows(profile_sizes: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(RESULTS.glob("core_gpu-*.json")):
        report = json.loads(path.read_text())
        if report.get("models") == "tiny" or report.get("device", {}).get("type") != "cuda":
            continue  # tiny models or no GPU: says nothing about a GPU's seconds per face
        for profile, (face_size, steps) in profile_sizes.items():
            timed = [
                r for r in report["results"] if r["face_size"] == face_size and str(steps) in r["seconds_per_face"]
            ]
            if not timed:
                continue
            best = min(r["seconds_per_face"][str(steps)] for r in timed)
            rows.append(
                {
                    "profile": profile,
                    "method": "reverse_personalization",
                    "face_size": face_size,
                    "num_steps": steps,
                    "device": report["device"]["name"],
                    "seconds_per_face": [best, best],
                    "kind": "measured",
                    "basis": "core_gpu.py, the fastest configuration timed",
                    "source": f"benchmarks/results/{path.name}",
                    "date": report.get("date"),
                }
            )
    return rows


def classic_rows() -> list[dict[str, Any]]:
    path = RESULTS / "classic_cpu.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    return [
        {
            "profile": row["method"],
            "method": row["method"],
            "device": report["device"]["name"],
            "seconds_per_image": row["seconds_per_image"],
            "kind": "measured",
            "basis": f"classic_cpu.py: detect, hide and gate, {report['images']} real photos, one process",
            "source": "benchmarks/results/classic_cpu.json",
            "date": report.get("date"),
        }
        for row in report["rows"]
    ]


def build() -> dict[str, Any]:
    sizes = profiles()
    return {
        "generated_by": "benchmarks/cost_table.py",
        "rows": measured_gpu_rows(sizes) + assumed_rows(sizes) + classic_rows(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if raypipe/cost_table.json is out of date")
    args = p.parse_args(argv)
    table = build()
    text = json.dumps(table, indent=1) + "\n"
    if args.check:
        current = TABLE.read_text() if TABLE.exists() else ""
        if json.loads(current or "{}").get("rows") != table["rows"]:
            print(f"{TABLE} is not what the benchmark results give; run benchmarks/cost_table.py", file=sys.stderr)
            return 1
        return 0
    TABLE.write_text(text)
    print(f"{len(table['rows'])} rows -> {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
