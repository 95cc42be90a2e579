"""``raypipe audit report``: a human-readable account of a run, as one HTML file plus two PNG plots.

Shows counts per status, the histogram of re-identification distances against the threshold and the
distances between different people, the faces per outcome (retried, obscured, not a face), a
table per shard, the parameters and models used, and every quarantined or failed sample with its
reason. It reads the manifest when there is one (else the completion markers) and the audit files;
it states what was recorded, and does not check it: ``raypipe audit verify`` does that.

Plots are drawn with matplotlib's Agg canvas directly (no pyplot), so rendering needs no display and
changes no global matplotlib state of the caller. Everything shown is escaped; nothing biometric is in
the inputs, so nothing biometric can be in the report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raypipe.audit.manifest import audit_rows, read_manifest
from raypipe.io.publish import exists, read_bytes
from raypipe.io.storage import StorageOptions, redact
from raypipe.layout import OutputLayout
from raypipe.logs import get_logger
from raypipe.records import Status

log = get_logger(__name__)

STATUS_ORDER = [s.value for s in Status]
STATUS_COLORS = {"anonymized": "#2e7d32", "no_face": "#1565c0", "quarantined": "#ef6c00", "failed": "#c62828"}
MAX_LISTED = 500  # quarantined/failed samples listed in full; beyond that the report says how many more
METHOD_COLUMNS = ("guidance_scale", "skip", "num_steps", "seed", "attribute_prompt")
PROVENANCE_COLUMNS = ("models", "weight_hashes", "config_hash", "code_version")


# Face statuses, in the order the report lists them.
FACE_OUTCOMES = ("anonymized", "obscured", "reidentified", "unchecked", "not_embeddable", "anonymize_error")


@dataclass
class ReportData:
    """What the report shows, gathered from OUTPUT."""

    output: str
    manifest: dict[str, Any] | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    distances: list[float] = field(default_factory=list)  # the gate's, one per verified face
    thresholds: Counter[float] = field(default_factory=Counter)
    face_counts: Counter[str] = field(default_factory=Counter)  # faces per status
    released_face_counts: Counter[str] = field(default_factory=Counter)  # ... in released samples
    retried: int = 0  # faces that took more than one diffusion attempt

    @property
    def recognizer(self) -> str | None:
        """The gate's recognizer, as the run recorded it."""
        reid = self.parameters.get("reid")
        return str(reid["recognizer"]) if isinstance(reid, dict) and reid.get("recognizer") else None

    held_back: list[dict[str, str]] = field(default_factory=list)  # quarantined and failed samples
    held_back_total: int = 0
    missed_faces: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)


def _shard_names(layout: OutputLayout, manifest: dict[str, Any] | None) -> list[str]:
    if manifest is not None:
        return sorted(manifest.get("shards") or {})
    # No manifest yet (run unfinished): the shards that carry a completion marker.
    names = [path.rstrip("/").rsplit("/", 1)[-1] for path in layout.fs.ls(layout.path(), detail=False)]
    return sorted(name[: -len(".done.json")] + ".tar" for name in names if name.endswith(".done.json"))


def _reason(row: dict[str, Any]) -> str:
    """Why a sample was held back, from its audit record (error, or the faces that did not pass)."""
    parts = []
    if row.get("error"):
        step = f" at {row['error_step']}" if row.get("error_step") else ""
        parts.append(f"{row['error']}{step}")
    for face in row.get("faces") or []:
        if face.get("status") == "anonymized":
            continue
        text = f"face {face.get('index')}: {face.get('status')}"
        if face.get("distance") is not None:
            text += f" (distance {face['distance']:.3f}"
            if face.get("threshold") is not None:
                text += f" {'>=' if face['distance'] >= face['threshold'] else '<'} {face['threshold']:.3f}"
            text += ")"
        if face.get("error"):
            text += f": {face['error']}"
        parts.append(text)
    return "; ".join(parts) or "no reason recorded"


def _add_rows(data: ReportData, shard: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        data.counts[str(row.get("status"))] += 1
        data.missed_faces += int(row.get("missed_faces") or 0)
        released = row.get("status") in (Status.ANONYMIZED.value, Status.NO_FACE.value)
        for face in row.get("faces") or []:
            data.face_counts[str(face.get("status"))] += 1
            data.released_face_counts[str(face.get("status"))] += released
            data.retried += (face.get("attempts") or 0) > 1
            distance = face.get("distance")
            if distance is not None and math.isfinite(distance):
                data.distances.append(float(distance))
            if face.get("threshold") is not None:
                data.thresholds[round(float(face["threshold"]), 4)] += 1
        if row.get("status") in (Status.QUARANTINED.value, Status.FAILED.value):
            data.held_back_total += 1
            if len(data.held_back) < MAX_LISTED:
                data.held_back.append(
                    {
                        "key": str(row.get("key")),
                        "shard": shard,
                        "status": str(row.get("status")),
                        "reason": _reason(row),
                    }
                )


def _parameters(data: ReportData, first: dict[str, Any] | None) -> dict[str, Any]:
    if data.manifest is not None and data.manifest.get("run"):
        return dict(data.manifest["run"])
    if first is None:
        return {}
    params: dict[str, Any] = {name: first.get(name) for name in METHOD_COLUMNS + PROVENANCE_COLUMNS}
    for name in ("models", "weight_hashes"):
        if isinstance(params.get(name), str):
            with contextlib.suppress(json.JSONDecodeError):  # else shown as recorded
                params[name] = json.loads(params[name])
    return params


def gather(root: str, options: StorageOptions | None = None) -> ReportData:
    """Read the manifest, markers and audit files of OUTPUT ``root`` into a :class:`ReportData`."""
    layout = OutputLayout(root, options or StorageOptions())
    data = ReportData(output=redact(root), manifest=read_manifest(layout))
    first: dict[str, Any] | None = None
    for shard in _shard_names(layout, data.manifest):
        marker = layout.read_marker(shard)
        entry: dict[str, Any] = {"shard": shard, "marker": marker is not None}
        path = layout.audit(shard)
        if exists(layout.fs, path):
            rows = audit_rows(read_bytes(layout.fs, path))
            first = first or (rows[0] if rows else None)
            _add_rows(data, shard, rows)
            entry["counts"] = dict(Counter(str(r.get("status")) for r in rows))
            entry["samples"] = len(rows)
        else:
            entry["counts"], entry["samples"] = {}, None
        entry["released"] = marker.get("released") if marker else None
        entry["tar_sha256"] = marker.get("tar_sha256") if marker else None
        data.shards.append(entry)
    data.parameters = _parameters(data, first)
    return data


# ------------------------------------------------------------------------------------------------ plots


def _save(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100)


def plot_counts(data: ReportData, path: Path) -> None:
    """Bar chart of samples per status."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    statuses = STATUS_ORDER + sorted(set(data.counts) - set(STATUS_ORDER))
    values = [data.counts.get(s, 0) for s in statuses]
    figure = Figure(figsize=(6, 3.2), layout="constrained")
    axes = figure.add_subplot()
    bars = axes.bar(statuses, values, color=[STATUS_COLORS.get(s, "#757575") for s in statuses])
    axes.bar_label(bars, labels=[str(v) for v in values])
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("samples")
    axes.set_title("Samples per status")
    axes.margins(y=0.15)
    _save(figure, path)


def plot_distance(data: ReportData, path: Path) -> None:
    """Histogram of the gate's original-vs-released distances, the threshold(s) as vertical lines, and
    the distances between photos of *different* people (the calibration's impostor pairs) beside them:
    a face to the left of that distribution looks more like its original than strangers do."""
    from matplotlib.figure import Figure

    from raypipe.audit.reid import calibration

    impostors = calibration()["impostor_distances"]
    figure = Figure(figsize=(6, 3.4), layout="constrained")
    axes = figure.add_subplot()
    top = max([1.2, *data.distances, *impostors])
    bins = [top * i / 48 for i in range(49)]
    if data.distances:
        axes.hist(data.distances, bins=bins, density=True, color="#546e7a", alpha=0.8, label="faces of this output")
    else:
        axes.text(0.5, 0.6, "no distances recorded", ha="center", va="center", transform=axes.transAxes)
    axes.hist(
        impostors,
        bins=bins,
        density=True,
        histtype="step",
        color="#ef6c00",
        linewidth=1.5,
        label=f"different people ({len(impostors)} calibration pairs)",
    )
    for threshold in sorted(data.thresholds):
        axes.axvline(threshold, color="#c62828", linestyle="--", label=f"threshold {threshold:g}")
    axes.legend(loc="upper left", fontsize="small")
    axes.set_xlim(0.0, top)
    axes.set_xlabel(f"distance, original vs released ({data.recognizer or 'independent recognizer'})")
    axes.set_ylabel("density")
    axes.set_title("Re-identification distance (below the threshold: still re-identifies)")
    _save(figure, path)


# ------------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:0.25em 0.6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:90%}img{max-width:100%}
.note{color:#555}
"""


def _e(value: Any) -> str:
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True)
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(data: ReportData, counts_png: str, distance_png: str) -> str:
    manifest = data.manifest or {}
    records = manifest.get("records") or {}
    signature = manifest.get("signature") or {}
    statuses = STATUS_ORDER + sorted(set(data.counts) - set(STATUS_ORDER))
    total = sum(data.counts.values())
    thresholds = ", ".join(f"{t:g}" for t in sorted(data.thresholds)) or "none recorded"
    below = sum(1 for d in data.distances if data.thresholds and d < max(data.thresholds))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>raypipe audit report: {_e(data.output)}</title><style>{_CSS}</style></head><body>",
        f"<h1>raypipe audit report</h1><p>Output: <code>{_e(data.output)}</code><br>",
        f"Generated: {_e(dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat())}<br>",
    ]
    if manifest:
        parts.append(
            f"Manifest {_e(manifest.get('sequence'))}, created {_e(manifest.get('created'))}, "
            f"Merkle root <code>{_e(records.get('merkle_root'))}</code> "
            f"over {_e(len(manifest.get('shards') or {}))} shard entries ({_e(records.get('count'))} records), "
            f"signed with {_e(signature.get('algorithm'))} "
            f"key <code>{_e(signature.get('key_id'))}</code>.</p>"
        )
    else:
        parts.append("No signed manifest: the run has not finished (shards with a completion marker shown).</p>")
    parts.append(
        "<p class='note'>This report shows what the audit records state; "
        "<code>raypipe audit verify</code> checks that they are unchanged.</p>"
    )
    parts.append("<h2>Samples per status</h2>")
    parts.append(
        _table(
            ["status", "samples", "share"],
            [
                [s, data.counts.get(s, 0), f"{100 * data.counts.get(s, 0) / total:.1f} %" if total else "-"]
                for s in statuses
            ],
        )
    )
    parts.append(f"<img src='{_e(counts_png)}' alt='bar chart of samples per status'>")
    parts.append(
        f"<p>Faces found again in released images where none was anonymized (missed faces): {data.missed_faces}</p>"
    )
    parts.append("<h2>Faces</h2>")
    names = [*FACE_OUTCOMES, *sorted(set(data.face_counts) - set(FACE_OUTCOMES))]
    parts.append(
        _table(
            ["face status", "faces", "in released samples"],
            [[name, data.face_counts.get(name, 0), data.released_face_counts.get(name, 0)] for name in names],
        )
    )
    parts.append(f"<p>Faces anonymized again after failing the gate (retried): {data.retried}</p>")
    parts.append("<h2>Re-identification distance</h2>")
    parts.append(
        f"<p>{len(data.distances)} faces scored by {_e(data.recognizer or 'the independent recognizer')}; "
        f"threshold(s): {_e(thresholds)}; {below} below the threshold (they did not pass: "
        "their samples were held back, or, for doubtful detections, the region was masked). The outline "
        "is the distance between photos of different people (benchmarks/reid_calibration.py): a "
        "released face should sit among them, not to their left.</p>"
    )
    parts.append(f"<img src='{_e(distance_png)}' alt='histogram of distances with the threshold and strangers'>")
    parts.append("<h2>Shards</h2>")
    parts.append(
        _table(
            ["shard", "samples", "released", *statuses, "completion marker", "tar sha256"],
            [
                [
                    e["shard"],
                    e["samples"],
                    e["released"],
                    *[e["counts"].get(s, 0) for s in statuses],
                    "yes" if e["marker"] else "MISSING",
                    (e["tar_sha256"] or "")[:16],
                ]
                for e in data.shards
            ],
        )
    )
    parts.append("<h2>Parameters and models</h2>")
    parts.append(_table(["name", "value"], [[k, v] for k, v in sorted(data.parameters.items())]))
    parts.append(f"<h2>Quarantined and failed samples ({data.held_back_total})</h2>")
    if data.held_back:
        parts.append(
            _table(
                ["key", "shard", "status", "reason"],
                [[h["key"], h["shard"], h["status"], h["reason"]] for h in data.held_back],
            )
        )
        if data.held_back_total > len(data.held_back):
            parts.append(f"<p>... and {data.held_back_total - len(data.held_back)} more (see the audit files).</p>")
    else:
        parts.append("<p>None.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def render_report(root: str, out: str | Path, options: StorageOptions | None = None) -> Path:
    """Write the report of OUTPUT ``root``; returns the HTML file's path.

    ``out`` is a local ``.html`` file (the plots go next to it as ``<name>-counts.png`` and
    ``<name>-distance.png``) or a folder (then ``report.html`` inside it).
    """
    target = Path(out)
    html_path = target if target.suffix.lower() in (".html", ".htm") else target / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    data = gather(root, options)
    counts_png = html_path.with_name(f"{html_path.stem}-counts.png")
    distance_png = html_path.with_name(f"{html_path.stem}-distance.png")
    plot_counts(data, counts_png)
    plot_distance(data, distance_png)
    html_path.write_text(_html(data, counts_png.name, distance_png.name), encoding="utf-8")
    log.info("audit report of %s written to %s", data.output, html_path)
    return html_path
