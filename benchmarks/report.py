"""Where the benchmarks write their JSON: ``benchmarks/results/<name>.json`` (``<name>-quick.json`` for the
quick settings the tests run), or the ``--out`` path given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(report: dict[str, Any], name: str, quick: bool, out: Path | None) -> Path:
    path = out or RESULTS / (f"{name}-quick.json" if quick else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
