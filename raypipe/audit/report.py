"""``raypipe audit report``: a human-readable account of a run, as ONE self-contained HTML file.

What it says, in order:

1. a banner from a fresh verification (:func:`raypipe.audit.verify.verify_output`) when a key is given:
   "verified OK", or every problem found, and that the numbers below are then not to be trusted (with
   what the manifest says beside what is present). Without a key, a banner that says the report was
   not verified and how to verify it;
2. a loud banner when a model was random or a test preset (``models.preset: tiny``);
3. the run (times in ISO 8601 UTC, duration, analyzer and recognizer), counts per status, faces per
   outcome (retried, obscured by the fallback, doubtful regions masked), the re-identification
   distances against those of different people, privacy against utility (distance vs pose change) and
   the utility deltas, the quarantine and escalation reasons counted, time per step, a table per
   shard, the parameters and models, and every quarantined or failed sample with its reason;
4. on request (``gallery=N``), up to N anonymized faces cropped from the released output shards.

Every count comes from the audit records actually present, never from the manifest's totals: when
files are missing or changed, the two differ and the report says both.

The file needs nothing else: plots are PNG data URIs drawn with matplotlib's Agg canvas directly (no
pyplot, so rendering needs no display and changes no global matplotlib state of the caller), the style
is inline, there is no script, and a Content-Security-Policy forbids the page to load anything. Every
value shown is escaped. Nothing biometric is read from the audit records (boxes, scores, distances and
utility deltas only), so nothing biometric is in the report, except the gallery's thumbnails of
released outputs when asked for.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import html
import io
import json
import math
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from raypipe.audit.manifest import RELEASED_STATUSES, ManifestError, audit_rows, finished_shards, read_manifest
from raypipe.audit.schema import sample_digest
from raypipe.audit.signing import KEY_ENV, Key
from raypipe.audit.verify import VerifyReport, safe_shard_name, verify_output
from raypipe.io.filetrees import folder_files, is_files_group, samples_of
from raypipe.io.publish import exists, is_local, read_bytes
from raypipe.io.storage import StorageOptions, redact
from raypipe.io.tables import ParquetShardError, is_table_shard, keyed_members, spooled
from raypipe.io.tars import Sample, TarReadError, iter_samples
from raypipe.layout import LinkedOutputError, OutputLayout, group_folder_of
from raypipe.logs import get_logger
from raypipe.records import Status

log = get_logger(__name__)

STATUS_ORDER = [s.value for s in Status]
STATUS_COLORS = {"anonymized": "#2e7d32", "no_face": "#1565c0", "quarantined": "#ef6c00", "failed": "#c62828"}
HELD_BACK = (Status.QUARANTINED.value, Status.FAILED.value)
RELEASED = (Status.ANONYMIZED.value, Status.NO_FACE.value)
MAX_LISTED = 500  # quarantined/failed samples listed in full; beyond that the report says how many more
MAX_REASONS = 100  # rows of the reasons table; the rest are summed up in one line
MAX_REASON_CHARS = 300
METHOD_COLUMNS = ("guidance_scale", "skip", "num_steps", "seed", "attribute_prompt")
PROVENANCE_COLUMNS = ("models", "weight_hashes", "config_hash", "code_version")

# Face statuses, in the order the report lists them.
FACE_OUTCOMES = ("anonymized", "obscured", "reidentified", "unchecked", "not_embeddable", "anonymize_error")
# What the gate writes into the error of a region it masked as a doubtful detection, and into the
# error of a face that the fallback hid (raypipe.anonymize.pipeline.Gate).
DOUBTFUL = "a doubtful detection"
FALLBACK = "audit.fallback"

# The utility deltas the report plots, with the words for their axis (raypipe.audit.utility).
UTILITY_METRICS = {
    "pose_change": "pose change, degrees (largest of |yaw|, |pitch|, |roll| change)",
    "landmark_drift": "landmark drift (inter-ocular distances)",
    "eye_change": "eye openness change (eye aspect ratio)",
    "mouth_change": "mouth openness change (opening / width)",
}

# Gallery: the size of a thumbnail's longer side, and what a member of a released sample may weigh.
THUMBNAIL_PX = 96
MAX_GALLERY_MEMBER_BYTES = 64 * 2**20

_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# No request of any kind: images only from data URIs, style only inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


@dataclass
class ReportData:
    """What the report shows, gathered from OUTPUT: every count from the audit records present."""

    output: str
    manifest: dict[str, Any] | None = None
    manifest_error: str | None = None  # why the manifest could not be read, when it could not
    shards: list[dict[str, Any]] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)  # files that could not be read, and why
    counts: Counter[str] = field(default_factory=Counter)
    distances: list[float] = field(default_factory=list)  # the gate's, one per verified face
    thresholds: Counter[float] = field(default_factory=Counter)
    below_threshold: int = 0  # faces whose distance is below their own threshold
    face_counts: Counter[str] = field(default_factory=Counter)  # faces per status
    released_face_counts: Counter[str] = field(default_factory=Counter)  # ... in released samples
    retried: int = 0  # faces that took more than one diffusion attempt
    obscured_by_fallback: int = 0  # faces hidden by audit.fallback after failing the gate
    fallback_failed: int = 0  # faces the fallback hid that failed the gate all the same
    doubtful_masked: int = 0  # doubtful detections that did not pass, masked
    missed_faces: int = 0
    # Utility, over the anonymized faces of released samples (the only ones it is measured on).
    utility_faces: int = 0
    utility: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in UTILITY_METRICS})
    utility_flags: Counter[str] = field(default_factory=Counter)
    privacy_utility: list[tuple[float, float]] = field(default_factory=list)  # (distance, pose change)
    # Why samples were held back and faces escalated: (sample status, step, face status, reason) -> n.
    reasons: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    timing_totals: dict[str, float] = field(default_factory=dict)  # step -> seconds over all samples
    timing_samples: Counter[str] = field(default_factory=Counter)  # step -> samples that recorded it
    timings_unreadable: int = 0
    record_recognizers: Counter[str] = field(default_factory=Counter)
    record_detectors: Counter[str] = field(default_factory=Counter)
    record_prompts: Counter[str] = field(default_factory=Counter)  # attribute prompt -> samples with faces
    test_model_signs: set[str] = field(default_factory=set)  # why the models look random or a test preset
    test_model_records: int = 0
    held_back: list[dict[str, str]] = field(default_factory=list)  # quarantined and failed samples
    held_back_total: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def records_present(self) -> int:
        """Audit records read from the audit files present."""
        return sum(self.counts.values())

    @property
    def manifest_records(self) -> int | None:
        """How many audit records the manifest commits to, when there is a manifest that says."""
        count = _dict(_dict(self.manifest).get("records")).get("count")
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    @property
    def recognizer(self) -> str | None:
        """The gate's recognizer, as the run recorded it (manifest), else as the records name it."""
        reid = self.parameters.get("reid")
        if isinstance(reid, dict) and reid.get("recognizer"):
            return str(reid["recognizer"])
        return ", ".join(sorted(self.record_recognizers)) or None

    @property
    def analyzer(self) -> str | None:
        """The face analyzer (detector) that found the faces, as the run or the records name it."""
        models = self.parameters.get("models")
        if isinstance(models, dict) and models.get("analyzer"):
            return str(models["analyzer"])
        return ", ".join(sorted(self.record_detectors)) or None


# ----------------------------------------------------------------------------------------------- gather


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    """A finite number of an audit record as a float, or None (null, NaN, not a number)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _normalized(reason: str) -> str:
    """A reason with its numbers as ``#``, so that reasons that differ only in numbers count together."""
    text = " ".join(_NUMBER.sub("#", reason).split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


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
        distance, threshold = _number(face.get("distance")), _number(face.get("threshold"))
        if distance is not None:
            text += f" (distance {distance:.3f}"
            if threshold is not None:
                text += f" {'>=' if distance >= threshold else '<'} {threshold:.3f}"
            text += ")"
        if face.get("error"):
            text += f": {face['error']}"
        parts.append(text)
    return "; ".join(parts) or "no reason recorded"


def random_model_signs(models: Any, weight_hashes: Any) -> list[str]:
    """What says that models were random or a test preset: ``preset: tiny`` (the run's models, see
    ``raypipe.pipeline.run``), a source that the tiny random models write (``tiny(seed=...)``) or a
    hub test checkpoint (``tiny-random``), or weights recorded as ``random``."""
    signs = []
    models, weight_hashes = _dict(models), _dict(weight_hashes)
    if models.get("preset") == "tiny":
        signs.append("models.preset is 'tiny' (a test preset)")
    for name, value in sorted(models.items()):
        text = str(value)
        if text.startswith("tiny(") or "tiny-random" in text:
            signs.append(f"model {name} is {text} (random weights)")
    for name, value in sorted(weight_hashes.items()):
        if value == "random":
            signs.append(f"the weights of {name} are random")
    return signs


@functools.lru_cache(maxsize=256)
def _record_model_signs(models: str | None, weight_hashes: str | None) -> tuple[str, ...]:
    """:func:`random_model_signs` of one record's JSON columns (the same few values repeat, hence the cache)."""

    def parsed(text: str | None) -> Any:
        with contextlib.suppress(json.JSONDecodeError, TypeError, RecursionError):
            return json.loads(text) if text else None
        return None

    return tuple(random_model_signs(parsed(models), parsed(weight_hashes)))


def _pose_change(face: dict[str, Any]) -> float | None:
    """The largest of the three angle changes of a face, in degrees (None unless all three are known)."""
    angles = [_number(face.get(name)) for name in ("yaw_change", "pitch_change", "roll_change")]
    known = [abs(a) for a in angles if a is not None]
    return max(known) if len(known) == 3 else None


def _add_utility(data: ReportData, face: dict[str, Any]) -> None:
    """Utility deltas of an anonymized face of a released sample (None values are skipped)."""
    data.utility_faces += 1
    values = {
        "pose_change": _pose_change(face),
        **{name: _number(face.get(name)) for name in ("landmark_drift", "eye_change", "mouth_change")},
    }
    for name, value in values.items():
        if value is not None:
            data.utility[name].append(value)
    distance = _number(face.get("distance"))
    if distance is not None and values["pose_change"] is not None:
        data.privacy_utility.append((distance, values["pose_change"]))
    data.utility_flags.update(str(flag) for flag in face.get("utility_flags") or [])


def _add_face(data: ReportData, row: dict[str, Any], face: dict[str, Any], released: bool) -> bool:
    """Count one face; True when it gave a reason (held back, or escalated to a mask or fallback)."""
    status = str(face.get("status"))
    error = str(face.get("error") or "")
    data.face_counts[status] += 1
    data.released_face_counts[status] += released
    attempts = face.get("attempts")
    data.retried += isinstance(attempts, int) and attempts > 1
    doubtful = DOUBTFUL in error
    data.doubtful_masked += doubtful
    data.obscured_by_fallback += status == "obscured" and not doubtful
    data.fallback_failed += status != "obscured" and FALLBACK in error
    distance, threshold = _number(face.get("distance")), _number(face.get("threshold"))
    if distance is not None:
        data.distances.append(distance)
        data.below_threshold += threshold is not None and distance < threshold
    if threshold is not None:
        data.thresholds[round(threshold, 4)] += 1
    if released and status == "anonymized":
        _add_utility(data, face)
    if status == "obscured" or (not released and status != "anonymized"):
        reason = error or str(row.get("error") or "") or "no reason recorded"
        step = str(row.get("error_step") or "-")
        data.reasons[(str(row.get("status")), step, status, _normalized(reason))] += 1
        return True
    return False


def _add_timings(data: ReportData, value: Any) -> None:
    """A record's ``timings`` (JSON: step -> seconds) into the totals per step."""
    if value is None:
        return
    try:
        timings = json.loads(value) if isinstance(value, str) else value
    except (json.JSONDecodeError, RecursionError):
        timings = None
    if not isinstance(timings, dict):
        data.timings_unreadable += 1
        return
    for step, seconds in timings.items():
        number = _number(seconds)
        if number is not None and number >= 0:
            data.timing_totals[str(step)] = data.timing_totals.get(str(step), 0.0) + number
            data.timing_samples[str(step)] += 1


def _add_rows(data: ReportData, shard: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        status = str(row.get("status"))
        data.counts[status] += 1
        data.missed_faces += int(_number(row.get("missed_faces")) or 0)
        released = status in RELEASED
        gave_reason = False
        for face in row.get("faces") or []:
            gave_reason |= _add_face(data, row, _dict(face), released)
        if (status in HELD_BACK or row.get("error")) and not gave_reason:
            reason = _normalized(str(row.get("error") or "no reason recorded"))
            data.reasons[(status, str(row.get("error_step") or "-"), "(sample)", reason)] += 1
        _add_timings(data, row.get("timings"))
        for column, counter in (("recognizer", data.record_recognizers), ("detector", data.record_detectors)):
            if row.get(column):
                counter[str(row[column])] += 1
        if row.get("faces"):
            data.record_prompts[str(row.get("attribute_prompt") or "")] += 1  # "": no prompt
        models, hashes = row.get("models"), row.get("weight_hashes")
        signs = _record_model_signs(
            models if isinstance(models, str) else None, hashes if isinstance(hashes, str) else None
        )
        data.test_model_signs.update(signs)
        data.test_model_records += bool(signs)
        if status in HELD_BACK:
            data.held_back_total += 1
            if len(data.held_back) < MAX_LISTED:
                data.held_back.append(
                    {"key": str(row.get("key")), "shard": shard, "status": status, "reason": _reason(row)}
                )


def _parameters(data: ReportData, first: dict[str, Any] | None) -> dict[str, Any]:
    run = _dict(data.manifest).get("run")
    if isinstance(run, dict) and run:
        return dict(run)
    if first is None:
        return {}
    params: dict[str, Any] = {name: first.get(name) for name in METHOD_COLUMNS + PROVENANCE_COLUMNS}
    if len(data.record_prompts) > 1:  # per-sample prompts (method.attribute_from): no one prompt is the run's
        params["attribute_prompt"] = f"{len(data.record_prompts)} prompts, one per sample's metadata"
    for name in ("models", "weight_hashes"):
        if isinstance(params.get(name), str):
            with contextlib.suppress(json.JSONDecodeError):  # else shown as recorded
                params[name] = json.loads(params[name])
    return params


def _read_audit(data: ReportData, layout: OutputLayout, shard: str) -> list[dict[str, Any]] | None:
    """The audit rows of a shard, or None (missing or unreadable: noted in ``data``)."""
    path = layout.audit(shard)
    if not exists(layout.fs, path):
        return None
    try:
        return audit_rows(read_bytes(layout.fs, path))
    except (pa.ArrowException, OSError, ValueError) as exc:
        data.read_errors.append(f"{shard}: the audit file cannot be read ({exc})")
        return None


def _read_marker(data: ReportData, layout: OutputLayout, shard: str) -> dict[str, Any] | None:
    try:
        return layout.read_marker(shard)
    except (ValueError, OSError) as exc:
        data.read_errors.append(f"{shard}: the completion marker cannot be read ({exc})")
        return None


def _add_shard(data: ReportData, layout: OutputLayout, shard: str) -> dict[str, Any] | None:
    """Read one shard's marker and audit into ``data``; returns its first audit record."""
    listed = _dict(_dict(_dict(data.manifest).get("shards")).get(shard))
    entry: dict[str, Any] = {"shard": shard, "manifest_samples": listed.get("samples"), "counts": {}, "samples": None}
    data.shards.append(entry)
    if not safe_shard_name(shard):
        entry.update(audit="not read (not a plain shard name)", marker=False, released=None, tar_sha256=None)
        data.read_errors.append(f"{shard[:80]!r}: not a plain shard name; nothing of it was read")
        return None
    marker = _read_marker(data, layout, shard)
    entry.update(marker=marker is not None, released=_dict(marker).get("released"))
    entry["tar_sha256"] = _dict(marker).get("tar_sha256")
    rows = _read_audit(data, layout, shard)
    if rows is None:
        entry["audit"] = "unreadable" if exists(layout.fs, layout.audit(shard)) else "MISSING"
        return None
    _add_rows(data, shard, rows)
    entry.update(audit="present", samples=len(rows), counts=dict(Counter(str(r.get("status")) for r in rows)))
    return rows[0] if rows else None


def gather(root: str, options: StorageOptions | None = None) -> ReportData:
    """Read the manifest, markers and audit files of OUTPUT ``root`` into a :class:`ReportData`.

    Reads what is there and checks nothing (:func:`raypipe.audit.verify.verify_output` does); files
    that cannot be read are noted in ``read_errors``, not raised.
    """
    layout = OutputLayout(root, options or StorageOptions())
    data = ReportData(output=redact(root))
    try:
        data.manifest = read_manifest(layout)
    except (ValueError, ManifestError) as exc:
        data.manifest_error = str(exc)
    if data.manifest is not None and not isinstance(data.manifest.get("shards"), dict):
        data.manifest_error = "the manifest has no table of shards"
    usable = data.manifest if data.manifest_error is None else None
    first: dict[str, Any] | None = None
    for shard in finished_shards(layout, usable):
        row = _add_shard(data, layout, str(shard))
        first = first or row
    data.parameters = _parameters(data, first)
    run = _dict(data.parameters if data.manifest is not None else None)
    data.test_model_signs.update(random_model_signs(run.get("models"), run.get("weight_hashes")))
    return data


# -------------------------------------------------------------------------------------------- wording


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def recorded_time(value: Any) -> tuple[str, dt.datetime | None]:
    """A recorded time (epoch seconds, or ISO 8601 text) as ISO 8601 UTC, and as a datetime when it is one."""
    moment = None
    number = _number(value)
    if number is not None:
        with contextlib.suppress(OverflowError, OSError, ValueError):
            moment = dt.datetime.fromtimestamp(number, dt.timezone.utc)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            moment = parsed if parsed.tzinfo is not None else None  # a time without zone says no instant
    if moment is None:
        return ("not recorded" if value is None else f"{value} (as recorded)"), None
    return _iso(moment), moment


def human_duration(seconds: float) -> str:
    """``0.42`` -> ``420 ms``, ``3.4`` -> ``3.4 s``, ``184`` -> ``3 min 4 s``, ``7500`` -> ``2 h 5 min``."""
    if seconds < 0:
        return f"-{human_duration(-seconds)}"
    if seconds == 0:
        return "0 s"
    if seconds < 0.001:
        return "under 1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def distance_axis_label(data: ReportData) -> str:
    """The distance plots' axis: what was measured, by which recognizer, on faces of which analyzer."""
    return (
        f"distance, original vs released (recognizer: {data.recognizer or 'not recorded'}; "
        f"faces found by: {data.analyzer or 'not recorded'})"
    )


# ------------------------------------------------------------------------------------------------ plots


def _data_uri(figure: Any) -> str:
    """The figure as a PNG data URI (drawn on an Agg canvas of its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_counts(data: ReportData) -> str:
    """Bar chart of samples per status, as a PNG data URI."""
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
    axes.set_title("Samples per status (audit records present)")
    axes.margins(y=0.15)
    return _data_uri(figure)


def plot_distance(data: ReportData) -> str:
    """Histogram of the gate's original-vs-released distances, the threshold(s) as vertical lines, and
    the distances between photos of *different* people (the calibration's impostor pairs) beside them:
    a face to the left of that distribution looks more like its original than strangers do."""
    from matplotlib.figure import Figure

    from raypipe.audit.reid import calibration

    impostors = calibration()["impostor_distances"]
    figure = Figure(figsize=(7, 3.6), layout="constrained")
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
    axes.set_xlabel(distance_axis_label(data), fontsize="small")
    axes.set_ylabel("density")
    axes.set_title("Re-identification distance (below the threshold: still re-identifies)")
    return _data_uri(figure)


def plot_privacy_utility(data: ReportData) -> str:
    """Scatter of each released anonymized face: distance to its original (privacy, x) against its pose
    change (utility, y); faces without either value are left out (the text says how many)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.8), layout="constrained")
    axes = figure.add_subplot()
    if data.privacy_utility:
        xs, ys = zip(*data.privacy_utility, strict=True)
        axes.scatter(xs, ys, s=14, color="#2e7d32", alpha=0.7, label=f"{len(xs)} anonymized faces")
        axes.legend(loc="upper left", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no face with both a distance and a pose change", ha="center", transform=axes.transAxes)
    for threshold in sorted(data.thresholds):
        axes.axvline(threshold, color="#c62828", linestyle="--")
    axes.set_xlabel(distance_axis_label(data), fontsize="small")
    axes.set_ylabel("pose change, degrees")
    axes.set_title("Privacy (further right) against utility (lower: pose kept)")
    return _data_uri(figure)


def plot_utility(data: ReportData) -> str:
    """Histograms of the four utility deltas of released anonymized faces (unmeasured faces left out)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.2), layout="constrained")
    for number, (name, label) in enumerate(UTILITY_METRICS.items(), start=1):
        axes = figure.add_subplot(2, 2, number)
        values = data.utility[name]
        if values:
            axes.hist(values, bins=24, color="#546e7a")
        else:
            axes.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel(label, fontsize="small")
        axes.set_ylabel("faces")
        axes.set_title(f"{len(values)} of {data.utility_faces} faces measured", fontsize="small")
    figure.suptitle("Utility: released minus original, per anonymized face")
    return _data_uri(figure)


# ---------------------------------------------------------------------------------------------- gallery


@dataclass(frozen=True)
class Thumbnail:
    """One anonymized face cropped from a released output sample, as a JPEG data URI."""

    uri: str
    key: str
    shard: str
    face: int


@dataclass
class Gallery:
    """The thumbnails shown and what could not be shown, with why (reason -> count)."""

    limit: int
    thumbnails: list[Thumbnail] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def _regular_file(layout: OutputLayout, path: str) -> bool:
    """True for a regular file: a link under OUTPUT could point at the originals, so it is never read."""
    fs = layout.fs
    if not exists(fs, path):
        return False
    if is_local(fs):
        return stat.S_ISREG(os.lstat(fs._strip_protocol(path)).st_mode)
    return bool(fs.info(path).get("type") == "file")


def _box(face: dict[str, Any]) -> tuple[float, float, float, float] | None:
    box = face.get("box")
    if not isinstance(box, list | tuple) or len(box) != 4:
        return None
    values = [_number(v) for v in box]
    if any(v is None for v in values):
        return None
    x1, y1, x2, y2 = (float(v) for v in values if v is not None)
    return x1, y1, x2, y2


def _thumbnail_uri(rgb: Any, box: tuple[float, float, float, float]) -> str | None:
    """The face at ``box`` (with a little margin) as a small JPEG data URI; None when the box holds no pixel."""
    from PIL import Image

    height, width = rgb.shape[:2]
    x1, y1, x2, y2 = box
    margin = 0.1 * max(x2 - x1, y2 - y1)
    left, top = max(0, math.floor(x1 - margin)), max(0, math.floor(y1 - margin))
    right, bottom = min(width, math.ceil(x2 + margin)), min(height, math.ceil(y2 + margin))
    if right <= left or bottom <= top:
        return None
    image = Image.fromarray(rgb[top:bottom, left:right])
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)  # a new image: no metadata of the output rides along
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _add_sample(gallery: Gallery, sample: Sample, row: dict[str, Any], shard: str) -> None:
    """Thumbnails of the anonymized faces of one released sample, after checking it is that sample."""
    from raypipe.images import decode_image, identify_image, image_format_for

    if sample_digest(sample.members) != row.get("output_sha256"):
        gallery.skipped["the sample in the tar does not hash to its audit record's output_sha256"] += 1
        return
    names = set(row.get("members") or [])
    images = [
        data for name, data in sample.members if name in names and (image_format_for(name) or identify_image(data))
    ]
    if len(images) != 1:
        gallery.skipped["not exactly one image member (the audit does not say which image a face is in)"] += 1
        return
    try:
        rgb = decode_image(images[0]).rgb
    except (ValueError, OSError):  # ImageDecodeError is a ValueError
        gallery.skipped["the image could not be decoded"] += 1
        return
    for face in row.get("faces") or []:
        face = _dict(face)
        box = _box(face)
        if face.get("status") != "anonymized" or len(gallery.thumbnails) >= gallery.limit:
            continue
        uri = _thumbnail_uri(rgb, box) if box is not None else None
        if uri is None:
            gallery.skipped["no usable face box"] += 1
            continue
        index = face.get("index")
        gallery.thumbnails.append(Thumbnail(uri, sample.key, shard, index if isinstance(index, int) else -1))


def _shard_records(layout: OutputLayout, shard: str) -> list[dict[str, Any]]:
    try:
        rows = audit_rows(read_bytes(layout.fs, layout.audit(shard)))
    except (pa.ArrowException, OSError, ValueError):
        return []  # already reported in the body (missing or unreadable audit)
    return sorted(rows, key=lambda row: row["seq"] if isinstance(row.get("seq"), int) else -1)


def _candidates(rows: list[dict[str, Any]], shard: str) -> dict[str, dict[str, Any]]:
    """Audit records of a shard's released samples that hold an anonymized face, by key."""
    return {
        str(row["key"]): row
        for row in rows
        if row.get("status") == Status.ANONYMIZED.value
        and row.get("output_shard") == shard
        and isinstance(row.get("output_sha256"), str)
        and any(_dict(face).get("status") == "anonymized" for face in row.get("faces") or [])
    }


def _add_shard_faces(gallery: Gallery, layout: OutputLayout, shard: str) -> None:
    records = _shard_records(layout, shard)
    wanted = _candidates(records, shard)
    if not wanted:
        return
    if is_files_group(shard):
        _add_files_faces(gallery, layout, shard, wanted)
        return
    path = layout.tar(shard)
    if not _regular_file(layout, path):
        gallery.skipped["a shard tar is missing or not a regular file (never read)"] += 1
        return
    if is_table_shard(shard):
        _add_table_faces(gallery, layout, path, shard, records, wanted)
        return
    try:
        with layout.fs.open(path, "rb") as handle:
            for item in iter_samples(handle, source=shard, max_member_bytes=MAX_GALLERY_MEMBER_BYTES):
                if isinstance(item, Sample) and item.key in wanted:
                    _add_sample(gallery, item, wanted.pop(item.key), shard)
                if len(gallery.thumbnails) >= gallery.limit:
                    return
    except (TarReadError, OSError):
        gallery.skipped["a shard tar could not be read to its end"] += 1


def _add_table_faces(
    gallery: Gallery,
    layout: OutputLayout,
    path: str,
    shard: str,
    records: list[dict[str, Any]],
    wanted: dict[str, dict[str, Any]],
) -> None:
    """Like the tar case, for a Parquet shard: its row ``j`` is the ``j``-th released record."""
    keys = [str(row.get("key")) for row in records if row.get("status") in RELEASED_STATUSES]
    try:
        with spooled(layout.fs, path, f"open {shard}") as (local, _):
            for key, members in keyed_members(local, keys):
                if key in wanted:
                    _add_sample(gallery, Sample(key=key, members=members), wanted.pop(key), shard)
                if len(gallery.thumbnails) >= gallery.limit:
                    return
    except (ParquetShardError, OSError):
        gallery.skipped["a shard table could not be read to its end"] += 1


def _add_files_faces(gallery: Gallery, layout: OutputLayout, shard: str, wanted: dict[str, dict[str, Any]]) -> None:
    """Like the tar case, for a group of files: the files of each wanted key in its folder (never
    through a link)."""
    try:
        paths = dict(folder_files(layout.fs, group_folder_of(layout, shard)))
        for key, names in samples_of(paths):
            if key not in wanted:
                continue
            if not all(_regular_file(layout, paths[name]) for name in names):
                gallery.skipped["a released file is not a regular file (never read)"] += 1
                continue
            members = [(name, read_bytes(layout.fs, paths[name])) for name in names]
            _add_sample(gallery, Sample(key=key, members=members), wanted.pop(key), shard)
            if len(gallery.thumbnails) >= gallery.limit:
                return
    except (OSError, LinkedOutputError):
        gallery.skipped["a folder of released files could not be read"] += 1


def gallery_faces(root: str, data: ReportData, limit: int, options: StorageOptions | None = None) -> Gallery:
    """Up to ``limit`` anonymized faces cropped from the released output shards of ``data``.

    Only the shard tars under OUTPUT are read (never the inputs, never the quarantine), only regular
    files, and only samples whose members hash to the ``output_sha256`` of an ``anonymized`` audit
    record; a face is cropped at its recorded box. Whatever cannot be read is counted, not raised.
    """
    layout = OutputLayout(root, options or StorageOptions())
    gallery = Gallery(limit=limit)
    for entry in data.shards:
        if len(gallery.thumbnails) >= limit:
            break
        if entry.get("audit") == "present":
            _add_shard_faces(gallery, layout, str(entry["shard"]))
    return gallery


# ------------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:76em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:0.25em 0.6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:90%}img{max-width:100%}
.note{color:#555}.banner{padding:0.8em 1.2em;margin:0 0 1.2em;border:3px solid;border-radius:4px}
.banner h2{margin-top:0}.bad{background:#ffebee;border-color:#c62828}.warn{background:#fff3e0;border-color:#ef6c00}
.ok{background:#e8f5e9;border-color:#2e7d32}.gallery figure{display:inline-block;margin:0.3em;text-align:center}
.gallery figcaption{font-size:75%;color:#555;max-width:8em;overflow-wrap:anywhere}
"""


def _e(value: Any) -> str:
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True)
    return html.escape("" if value is None else str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(uri: str, alt: str) -> str:
    return f"<img src='{_e(uri)}' alt='{_e(alt)}'>"


def _discrepancies(data: ReportData) -> list[str]:
    """Where the files present disagree with the manifest, or could not be read (HTML sentences)."""
    notes = []
    if data.manifest_error:
        notes.append(f"The manifest cannot be used: {_e(data.manifest_error)}.")
    expected = data.manifest_records
    if expected is not None and expected != data.records_present:
        notes.append(
            f"The manifest says {expected} records; {data.records_present} are present in the audit files read."
        )
    missing = [e["shard"] for e in data.shards if e.get("audit") != "present"]
    if missing:
        notes.append(f"Audit files not read, of {len(missing)} shard(s): {_e(', '.join(missing[:20]))}.")
    notes.extend(_e(error) + "." for error in data.read_errors[:20])
    return notes


def _verification_banner(data: ReportData, verification: VerifyReport | None) -> str:
    notes = "".join(f"<p>{note}</p>" for note in _discrepancies(data))
    if verification is None:
        return (
            "<div class='banner warn' id='verification'><h2>Not verified</h2>"
            "<p>This report shows what the files under OUTPUT state; nothing checked that they are "
            f"unchanged. Verify them with <code>raypipe audit verify {_e(data.output)} --key-file KEY</code> "
            f"(or with the key in <code>{_e(KEY_ENV)}</code>), or render the report with the key.</p>"
            f"{notes}</div>"
        )
    if verification.ok:
        anchor = (
            f", and OUTPUT descends from anchor checkpoint {verification.anchor}"
            if verification.anchor is not None
            else "; without an anchor, a rollback to an earlier signed state cannot be ruled out"
        )
        return (
            "<div class='banner ok' id='verification'><h2>Verified OK</h2>"
            f"<p>Manifest {_e(verification.sequence)}: {verification.shards} shards, {verification.samples} "
            f"samples, Merkle root <code>{_e(verification.merkle_root)}</code>, signed by key "
            f"<code>{_e(verification.key_id)}</code>. The files match the signed manifest{_e(anchor)}.</p>"
            f"{notes}</div>"
        )
    problems = _table(["kind", "where", "detail"], [[p.kind, p.where, p.detail] for p in verification.problems])
    return (
        "<div class='banner bad' id='verification'>"
        f"<h2>Verification FAILED: {len(verification.problems)} problem(s)</h2>"
        "<p><strong>The numbers below are not trustworthy</strong>: they are read from the files present, "
        "which do not match what the run signed.</p>"
        f"{notes}{problems}</div>"
    )


def _test_model_banner(data: ReportData) -> str:
    if not data.test_model_signs:
        return ""
    records = (
        f" {data.test_model_records} of {data.records_present} audit records say so." if data.records_present else ""
    )
    signs = "".join(f"<li>{_e(sign)}</li>" for sign in sorted(data.test_model_signs))
    return (
        "<div class='banner bad' id='test-models'><h2>TEST MODELS: random weights or a test preset</h2>"
        "<p>This output was made with models that are random or a test preset (<code>tiny</code>), not "
        "with the real method: its images were not anonymized by a trained model, and its numbers say "
        f"nothing about how the real method performs.{_e(records)}</p><ul>{signs}</ul></div>"
    )


def _overview(data: ReportData) -> str:
    manifest = data.manifest or {}
    records = _dict(manifest.get("records"))
    signature = _dict(manifest.get("signature"))
    generated = _iso(dt.datetime.now(dt.timezone.utc))
    parts = [
        f"<h1>raypipe audit report</h1><p>Output: <code>{_e(data.output)}</code><br>Generated: {_e(generated)}<br>"
    ]
    if manifest:
        parts.append(
            f"Manifest {_e(manifest.get('sequence'))}, created {_e(recorded_time(manifest.get('created'))[0])}, "
            f"Merkle root <code>{_e(records.get('merkle_root'))}</code> "
            f"over {_e(len(_dict(manifest.get('shards'))))} shard entries ({_e(records.get('count'))} records), "
            f"signed with {_e(signature.get('algorithm'))} key <code>{_e(signature.get('key_id'))}</code>.</p>"
        )
    else:
        parts.append("No signed manifest: the run has not finished (shards with a completion marker shown).</p>")
    parts.append(
        f"<p class='note'>Every number below is counted from the {data.records_present} audit records present "
        f"in {sum(e.get('audit') == 'present' for e in data.shards)} audit files.</p>"
    )
    return "".join(parts)


def _names(counter: Counter[str]) -> str:
    return ", ".join(f"{name} ({n} records)" for name, n in sorted(counter.items())) or "not recorded"


def _prompts(counter: Counter[str], shown: int = 10) -> str:
    """The most common prompts (a per-sample prompt source can give many), then how many more."""
    common = counter.most_common(shown)
    text = ", ".join(f"{prompt!r} ({n} records)" if prompt else f"none ({n} records)" for prompt, n in common)
    rest = len(counter) - len(common)
    return (text + (f", and {rest} more prompts" if rest else "")) or "no faces"


def _run_section(data: ReportData) -> str:
    run = data.parameters if data.manifest is not None else {}
    started, start = recorded_time(run.get("started"))
    finished, end = recorded_time(run.get("finished"))
    duration = human_duration((end - start).total_seconds()) if start and end else "unknown"
    rows = [
        ["started", started],
        ["finished", finished],
        ["duration", duration],
        ["face analyzer (detector)", data.analyzer or "not recorded"],
        ["analyzer named by the records", _names(data.record_detectors)],
        ["recognizer of the re-identification gate", data.recognizer or "not recorded"],
        ["recognizer named by the records", _names(data.record_recognizers)],
        ["attribute prompts of the samples with faces", _prompts(data.record_prompts)],
    ]
    return "<h2>Run</h2>" + _table(["", ""], rows)


def _status_section(data: ReportData, counts_png: str) -> str:
    statuses = STATUS_ORDER + sorted(set(data.counts) - set(STATUS_ORDER))
    total = data.records_present
    rows = [
        [s, data.counts.get(s, 0), f"{100 * data.counts.get(s, 0) / total:.1f} %" if total else "-"] for s in statuses
    ]
    return (
        "<h2>Samples per status</h2>"
        + _table(["status", "samples", "share"], rows)
        + _img(counts_png, "bar chart of samples per status")
        + f"<p>Faces found again in released images where none was anonymized (missed faces): {data.missed_faces}</p>"
    )


def _faces_section(data: ReportData) -> str:
    names = [*FACE_OUTCOMES, *sorted(set(data.face_counts) - set(FACE_OUTCOMES))]
    rows = [[name, data.face_counts.get(name, 0), data.released_face_counts.get(name, 0)] for name in names]
    outcomes = [
        ["faces retried (more than one diffusion attempt)", data.retried],
        ["faces obscured by the fallback (audit.fallback) and released", data.obscured_by_fallback],
        ["faces the fallback hid that failed the gate all the same", data.fallback_failed],
        ["doubtful regions masked (not confirmed as faces, did not pass)", data.doubtful_masked],
    ]
    return (
        "<h2>Faces</h2>"
        + _table(["face status", "faces", "in released samples"], rows)
        + _table(["what happened", "faces"], outcomes)
    )


def _distance_section(data: ReportData, distance_png: str) -> str:
    thresholds = ", ".join(f"{t:g}" for t in sorted(data.thresholds)) or "none recorded"
    return (
        "<h2>Re-identification distance</h2>"
        f"<p>{len(data.distances)} faces scored by {_e(data.recognizer or 'the independent recognizer')} "
        f"(faces found by {_e(data.analyzer or 'an analyzer not recorded')}); threshold(s): {_e(thresholds)}; "
        f"{data.below_threshold} below the threshold (they did not pass: their samples were held back, or, "
        "for doubtful detections, the region was masked). The outline is the distance between photos of "
        "different people (benchmarks/reid_calibration.py): a released face should sit among them, not to "
        "their left.</p>"
        + _same_family(data)
        + _img(distance_png, "histogram of distances with the threshold and strangers")
    )


def _same_family(data: ReportData) -> str:
    """A warning when the faces were found by the recognizer's own family of models (dlib and dlib)."""
    family = (data.analyzer or "").split("-")[0]
    if not family or family != (data.recognizer or "").split("-")[0]:
        return ""
    return (
        f"<p class='warn'>The faces were found by {_e(data.analyzer)} and checked by {_e(data.recognizer)}: "
        "the same family of models, so in this run the gate is not independent of the detector (in "
        "production insightface detects and conditions, dlib checks).</p>"
    )


def _utility_section(data: ReportData, scatter_png: str, utility_png: str) -> str:
    faces = data.utility_faces
    rows = []
    for name in UTILITY_METRICS:
        values = sorted(data.utility[name])
        median = values[len(values) // 2] if values else None
        largest = f"{max(abs(v) for v in values):.3g}" if values else "-"
        rows.append([name, len(values), faces - len(values), f"{median:.3g}" if median is not None else "-", largest])
    skipped = faces - len(data.privacy_utility)
    flags = (
        _table(["utility flag", "faces"], [[f, n] for f, n in sorted(data.utility_flags.items())])
        if data.utility_flags
        else ""
    )
    return (
        "<h2>Privacy and utility</h2>"
        f"<p>Utility is measured on the anonymized faces of released samples (faces: {faces}). Plotted: "
        f"{len(data.privacy_utility)} with both a distance and a pose change; left out, unmeasured "
        f"(a null value): {skipped}.</p>"
        + _img(scatter_png, "scatter of distance against pose change")
        + _table(["measure", "faces measured", "faces unmeasured", "median", "largest |value|"], rows)
        + _img(utility_png, "histograms of pose change, landmark drift, eye and mouth change")
        + flags
    )


def _reasons_section(data: ReportData) -> str:
    if not data.reasons:
        return "<h2>Quarantine and escalation reasons</h2><p>None.</p>"
    ordered = sorted(data.reasons.items(), key=lambda item: (-item[1], item[0]))
    rows = [[*group, count] for group, count in ordered[:MAX_REASONS]]
    more = ""
    if len(ordered) > MAX_REASONS:
        rest = sum(count for _, count in ordered[MAX_REASONS:])
        more = f"<p>... and {len(ordered) - MAX_REASONS} more reasons ({rest} in all).</p>"
    return (
        "<h2>Quarantine and escalation reasons</h2>"
        "<p class='note'>Grouped by sample status, step and face status, numbers in the reason written as #. "
        "A row counts faces; for face status <code>(sample)</code> it counts samples held back without a "
        "failing face (decode errors, missed faces, ...).</p>"
        + _table(["sample status", "step", "face status", "reason", "count"], rows)
        + more
    )


def _timings_section(data: ReportData) -> str:
    if not data.timing_totals:
        return "<h2>Time per step</h2><p>No timings recorded.</p>"
    ordered = sorted(data.timing_totals.items(), key=lambda item: -item[1])
    rows = [
        [step, data.timing_samples[step], human_duration(total), human_duration(total / data.timing_samples[step])]
        for step, total in ordered
    ]
    unreadable = f" {data.timings_unreadable} records had unreadable timings." if data.timings_unreadable else ""
    return (
        "<h2>Time per step</h2><p class='note'>Summed over the samples (work time, not wall-clock time: "
        f"workers run in parallel).{_e(unreadable)}</p>" + _table(["step", "samples", "total", "mean per sample"], rows)
    )


def _shards_section(data: ReportData) -> str:
    statuses = STATUS_ORDER + sorted(set(data.counts) - set(STATUS_ORDER))
    rows = [
        [
            e["shard"],
            e.get("manifest_samples"),
            e["samples"],
            e.get("released"),
            *[e["counts"].get(s, 0) for s in statuses],
            e.get("audit"),
            "yes" if e.get("marker") else "MISSING",
            (e.get("tar_sha256") or "")[:16],
        ]
        for e in data.shards
    ]
    header = [
        "shard",
        "samples (manifest)",
        "samples (audit)",
        "released",
        *statuses,
        "audit file",
        "completion marker",
    ]
    return "<h2>Shards</h2>" + _table([*header, "tar sha256"], rows)


def _parameters_section(data: ReportData) -> str:
    rows = []
    for name, value in sorted(data.parameters.items()):
        if name in ("started", "finished") and value is not None:
            value = f"{recorded_time(value)[0]} (recorded as {value})"
        rows.append([name, value])
    return "<h2>Parameters and models</h2>" + _table(["name", "value"], rows)


def _held_back_section(data: ReportData) -> str:
    parts = [f"<h2>Quarantined and failed samples ({data.held_back_total})</h2>"]
    if not data.held_back:
        return parts[0] + "<p>None.</p>"
    parts.append(
        _table(
            ["key", "shard", "status", "reason"],
            [[h["key"], h["shard"], h["status"], h["reason"]] for h in data.held_back],
        )
    )
    if data.held_back_total > len(data.held_back):
        parts.append(f"<p>... and {data.held_back_total - len(data.held_back)} more (see the audit files).</p>")
    return "".join(parts)


def _gallery_section(gallery: Gallery | None) -> str:
    if gallery is None:
        return ""
    figures = "".join(
        f"<figure>{_img(t.uri, f'anonymized face {t.face} of {t.key}')}"
        f"<figcaption>{_e(t.key)} face {_e(t.face)}</figcaption></figure>"
        for t in gallery.thumbnails
    )
    skipped = "".join(f"<li>{_e(why)}: {n}</li>" for why, n in sorted(gallery.skipped.items()))
    return (
        f"<h2>Gallery of released faces ({len(gallery.thumbnails)} of at most {gallery.limit})</h2>"
        "<div class='banner warn'><strong>Warning: these are anonymized faces cropped from the released "
        "output. They still look like people and are personal-looking data: share this report only as "
        "you would share the output itself.</strong> Only released output shards are read, never the "
        "originals or the quarantine.</div>"
        f"<div class='gallery'>{figures or '<p>No face could be shown.</p>'}</div>"
        + (f"<p>Not shown:</p><ul>{skipped}</ul>" if skipped else "")
    )


def render_html(data: ReportData, verification: VerifyReport | None, gallery: Gallery | None = None) -> str:
    """The report as one HTML document: banners first, then the sections, plots inline."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>raypipe audit report: {_e(data.output)}</title><style>{_CSS}</style></head><body>",
        _verification_banner(data, verification),
        _test_model_banner(data),
        _overview(data),
        _run_section(data),
        _status_section(data, plot_counts(data)),
        _faces_section(data),
        _distance_section(data, plot_distance(data)),
        _utility_section(data, plot_privacy_utility(data), plot_utility(data)),
        _reasons_section(data),
        _timings_section(data),
        _shards_section(data),
        _parameters_section(data),
        _held_back_section(data),
        _gallery_section(gallery),
        "</body></html>\n",
    ]
    return "".join(parts)


def render_report(
    root: str,
    out: str | Path,
    options: StorageOptions | None = None,
    key: Key | None = None,
    anchor: str | None = None,
    gallery: int = 0,
) -> Path:
    """Write the report of OUTPUT ``root`` as one self-contained HTML file; returns its path.

    ``out`` is a local ``.html`` file or a folder (then ``report.html`` inside it). With ``key``,
    OUTPUT is verified first (with ``anchor`` too, see :func:`verify_output`) and the report opens with
    the outcome. ``gallery``: show up to that many anonymized faces of the released output (0: none).
    """
    if gallery < 0:
        raise ValueError(f"gallery must be 0 (off) or a number of faces, got {gallery}")
    target = Path(out)
    html_path = target if target.suffix.lower() in (".html", ".htm") else target / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    verification = verify_output(root, key, options, anchor=anchor) if key is not None else None
    data = gather(root, options)
    faces = gallery_faces(root, data, gallery, options) if gallery else None
    html_path.write_text(render_html(data, verification, faces), encoding="utf-8")
    log.info("audit report of %s written to %s", data.output, html_path)
    return html_path
