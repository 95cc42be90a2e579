"""The human report: one self-contained HTML file that tells the truth about OUTPUT.

Banners first (a fresh verification, test models), counts from the audit records present, inline plots
that are real PNG images, human-readable times, reasons counted, an optional gallery, values escaped.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from raypipe.audit.report import distance_axis_label, gather, human_duration, recorded_time, render_report
from raypipe.audit.signing import Key
from raypipe.layout import OutputLayout

from .conftest import (
    RUN,
    SHARDS,
    audit_bytes,
    make_output,
    make_output_with_images,
    sample_key,
    shard_contents,
    shard_names,
    sign_shards,
    write_shard,
)

HEADINGS = (
    "raypipe audit report",
    "Run",
    "Samples per status",
    "Faces",
    "Re-identification distance",
    "Privacy and utility",
    "Quarantine and escalation reasons",
    "Time per step",
    "Shards",
    "Parameters and models",
)
REAL_MODELS = {"preset": "sdxl", "analyzer": "insightface", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
REAL_HASHES = {"sdxl": "cd" * 32}


class Page(HTMLParser):
    """Every start tag with its attributes, and the text of the headings."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headings: list[str] = []
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("h1", "h2"):
            self._heading = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading.append(data)

    def images(self) -> list[str]:
        return [str(attrs.get("src")) for tag, attrs in self.tags if tag == "img"]


def decoded(uri: str, kind: str) -> Image.Image:
    prefix = f"data:image/{kind};base64,"
    assert uri.startswith(prefix), uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :], validate=True)))
    image.load()
    return image


def assert_plot(uri: str) -> None:
    image = decoded(uri, "png")
    assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 2  # something was drawn


def body(text: str) -> str:
    return text[text.index("<body>") + len("<body>") :]


def rebuilt(root: Path, edit: Callable[[int, list[dict[str, Any]]], None], shards: int = len(SHARDS)) -> OutputLayout:
    """An OUTPUT like make_output's, with ``edit(shard_index, records)`` applied to each shard's records
    (samples that are no longer released are left out of the tar)."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        records, samples = shard_contents(index)
        edit(index, records)
        released = {r["key"] for r in records if r["status"] in ("anonymized", "no_face")}
        write_shard(root, SHARDS[index], records, [s for s in samples if s.key in released])
    return OutputLayout(str(root))


def test_the_report_is_one_self_contained_html_file(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    html_path = render_report(layout.root, tmp_path / "report" / "audit.html")
    assert html_path == tmp_path / "report" / "audit.html"
    assert [p.name for p in html_path.parent.iterdir()] == ["audit.html"]  # no PNG beside it
    text = html_path.read_text(encoding="utf-8")
    page = Page(text)
    images = page.images()
    assert len(images) == 4  # counts, distance, privacy against utility, utility histograms
    for uri in images:
        assert_plot(uri)
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base", "form")
        for name, value in attrs.items():
            assert "http:" not in str(value) and "https:" not in str(value), (tag, name)
            if name in ("src", "href"):
                assert str(value).startswith("data:image/"), (tag, name)
    assert "url(" not in text and "@import" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    for heading in HEADINGS:
        assert heading in page.headings


def test_the_report_states_what_the_records_say(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    text = render_report(layout.root, tmp_path / "folder").read_text(encoding="utf-8")
    assert "Quarantined and failed samples (2)" in text
    for shard_index in range(2):
        assert sample_key(shard_index, 2) in text  # each quarantined sample, with its reason
    assert "reidentified (distance 0.250 &lt; 0.600)" in text
    assert "4 faces scored by dlib-hog" in text and "threshold(s): 0.6; 2 below the threshold" in text
    # Faces per status, and how many of them are in released samples.
    assert "<tr><td>anonymized</td><td>2</td><td>2</td></tr>" in text
    assert "<tr><td>reidentified</td><td>2</td><td>0</td></tr>" in text
    assert "counted from the 6 audit records present in 2 audit files" in text
    assert hmac_key.key_id in text
    assert json.loads(Path(layout.state("manifest.json")).read_text())["records"]["merkle_root"] in text


def test_a_verified_output_opens_with_verified_ok(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    text = body(render_report(layout.root, tmp_path / "r.html", key=hmac_key).read_text(encoding="utf-8"))
    assert text.startswith("<div class='banner ok' id='verification'><h2>Verified OK</h2>")
    assert f"signed by key <code>{hmac_key.key_id}</code>" in text
    assert "not trustworthy" not in text


def test_without_a_key_the_report_says_it_was_not_verified_and_how(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    text = body(render_report(layout.root, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert text.startswith("<div class='banner warn' id='verification'><h2>Not verified</h2>")
    assert f"raypipe audit verify {layout.root} --key-file KEY" in text.split("</div>")[0]


def test_a_deleted_audit_file_is_listed_first_and_the_numbers_are_distrusted(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    Path(layout.audit("data-00001.tar")).unlink()
    text = body(render_report(layout.root, tmp_path / "r.html", key=hmac_key).read_text(encoding="utf-8"))
    banner = text[: text.index("<h1>")]
    assert banner.startswith("<div class='banner bad' id='verification'><h2>Verification FAILED")
    assert banner.index("not trustworthy") < banner.index("<table>")
    assert "The manifest says 6 records; 3 are present in the audit files read." in banner
    assert (
        "<tr><td>missing</td><td>.raypipe/shards/data-00001.audit.parquet</td><td>audit file is gone</td></tr>"
        in banner
    )
    # The body counts what is present, and the shard table says what is missing.
    assert "<tr><td>quarantined</td><td>1</td><td>50.0 %</td></tr>" not in text
    assert "<tr><td>anonymized</td><td>1</td><td>33.3 %</td></tr>" in text
    assert "<td>data-00001.tar</td><td>3</td><td></td><td>2</td>" in text and "<td>MISSING</td>" in text


def test_a_changed_record_is_listed_first(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    records, _ = shard_contents(0)
    records[2] |= {"status": "anonymized", "error": None, "error_step": None}  # a quarantined sample "passed"
    Path(layout.audit("data-00000.tar")).write_bytes(audit_bytes(records))
    text = body(render_report(layout.root, tmp_path / "r.html", key=hmac_key).read_text(encoding="utf-8"))
    banner = text[: text.index("<h1>")]
    assert "Verification FAILED" in banner and "not trustworthy" in banner
    assert "<tr><td>modified</td><td>.raypipe/shards/data-00000.audit.parquet</td>" in banner
    assert "Quarantined and failed samples (1)" in text  # what the changed file says, under the banner


def test_a_tiny_preset_or_random_models_are_announced_loudly(tmp_path: Path, hmac_key: Key) -> None:
    def real(index: int, records: list[dict[str, Any]]) -> None:
        for record in records:
            record |= {"models": json.dumps(REAL_MODELS), "weight_hashes": json.dumps(REAL_HASHES)}

    layout = rebuilt(tmp_path / "real", real)
    sign_shards(layout, shard_names(), hmac_key, {**RUN, "models": REAL_MODELS, "weight_hashes": REAL_HASHES})
    assert "TEST MODELS" not in render_report(layout.root, tmp_path / "real.html").read_text(encoding="utf-8")

    tiny = rebuilt(tmp_path / "tiny", real)
    sign_shards(tiny, shard_names(), hmac_key, {**RUN, "models": {"preset": "tiny", "analyzer": "dlib"}})
    text = body(render_report(tiny.root, tmp_path / "tiny.html").read_text(encoding="utf-8"))
    assert text.index("TEST MODELS") < text.index("<h1>")
    assert "models.preset is &#x27;tiny&#x27;" in text

    def tiny_records(index: int, records: list[dict[str, Any]]) -> None:
        for record in records:
            record |= {"models": json.dumps({"sdxl": "tiny(seed=0)"}), "weight_hashes": '{"sdxl": "random"}'}

    unsigned = rebuilt(tmp_path / "records", tiny_records)  # no manifest: the records say it
    text = body(render_report(unsigned.root, tmp_path / "records.html").read_text(encoding="utf-8"))
    assert text.index("TEST MODELS") < text.index("<h1>")
    assert "model sdxl is tiny(seed=0)" in text and "6 of 6 audit records say so" in text


def test_times_are_human_readable(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key, {**RUN, "started": 1714557600.0, "finished": 1714557784.2})
    text = render_report(layout.root, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<tr><td>started</td><td>2024-05-01T10:00:00Z</td></tr>" in text
    assert "<tr><td>finished</td><td>2024-05-01T10:03:04Z</td></tr>" in text
    assert "<tr><td>duration</td><td>3 min 4 s</td></tr>" in text
    # Per-record timings ({"anon": 0.5} in each of the 6 records), summed and averaged per step.
    assert "<tr><td>anon</td><td>6</td><td>3.0 s</td><td>500 ms</td></tr>" in text
    assert [human_duration(s) for s in (0, 0.0004, 0.42, 3.44, 42.4, 184, 7500, 90000)] == [
        "0 s",
        "under 1 ms",
        "420 ms",
        "3.4 s",
        "42 s",
        "3 min 4 s",
        "2 h 5 min",
        "1 d 1 h",
    ]
    assert recorded_time("2024-05-01T10:00:00+00:00")[0] == "2024-05-01T10:00:00Z"
    assert recorded_time(None)[0] == "not recorded"


def test_the_recognizer_and_the_analyzer_are_named(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key, {**RUN, "models": REAL_MODELS})
    text = render_report(layout.root, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "4 faces scored by dlib-hog (faces found by insightface)" in text
    label = distance_axis_label(gather(layout.root))
    assert "recognizer: dlib-hog" in label and "faces found by: insightface" in label

    def named(index: int, records: list[dict[str, Any]]) -> None:
        for record in records:
            record |= {"detector": "dlib-hog-analyzer", "recognizer": "dlib-resnet"}

    unsigned = rebuilt(tmp_path / "records", named)
    label = distance_axis_label(gather(unsigned.root))
    assert "recognizer: dlib-resnet" in label and "faces found by: dlib-hog-analyzer" in label
    text = render_report(unsigned.root, tmp_path / "records.html").read_text(encoding="utf-8")
    assert "<td>recognizer named by the records</td><td>dlib-resnet (6 records)</td>" in text
    # Both dlib: the report says the gate was not independent of the detector in that run.
    assert "the same family of models" in text
    independent = render_report(layout.root, tmp_path / "r2.html").read_text(encoding="utf-8")
    assert "the same family of models" not in independent  # insightface found, dlib checked


def _escalated(index: int, records: list[dict[str, Any]]) -> None:
    """Shard 0: a retried face hidden by the fallback and a doubtful region masked in the anonymized
    sample; both shards: the quarantined face re-identifies after 3 attempts (distances differ);
    shard 1: the faceless sample failed to decode."""
    face = records[0]["faces"][0]
    if index == 0:
        fallback = "still re-identifies (distance 0.412 < 0.6) after 3 attempts; hidden by blur (audit.fallback)"
        doubtful = (
            "still re-identifies (distance 0.1 < 0.6); a doubtful detection (score 0.12 below "
            "audit.non_face_score 0.3, and dlib-hog finds no face there in the original): masked"
        )
        records[0]["faces"] = [
            face,
            face | {"index": 1, "status": "obscured", "attempts": 3, "distance": 0.7, "error": fallback},
            face | {"index": 2, "status": "obscured", "distance": 0.1, "error": doubtful},
        ]
    distance = 0.25 + index / 10
    error = f"still re-identifies (distance {distance:.3f} < 0.6) after 3 attempts"
    records[2]["faces"] = [records[2]["faces"][0] | {"attempts": 3, "distance": distance, "error": error}]
    if index == 1:
        records[1] |= {"status": "failed", "error": "img1001.jpg: cannot identify image file", "error_step": "decode"}


def test_quarantine_and_escalation_reasons_are_counted(tmp_path: Path) -> None:
    layout = rebuilt(tmp_path / "out", _escalated)
    text = render_report(layout.root, tmp_path / "r.html").read_text(encoding="utf-8")
    reasons = text[text.index("Quarantine and escalation reasons") : text.index("Time per step")]
    assert (
        "<tr><td>quarantined</td><td>verify</td><td>reidentified</td>"
        "<td>still re-identifies (distance # &lt; #) after # attempts</td><td>2</td></tr>"
    ) in reasons
    assert "<tr><td>failed</td><td>decode</td><td>(sample)</td><td>img#.jpg: cannot identify image file</td>" in reasons
    assert "hidden by blur (audit.fallback)</td><td>1</td>" in reasons
    assert "a doubtful detection (score # below audit.non_face_score #" in reasons
    assert "<tr><td>faces retried (more than one diffusion attempt)</td><td>3</td></tr>" in text
    assert "<tr><td>faces obscured by the fallback (audit.fallback) and released</td><td>1</td></tr>" in text
    assert "<tr><td>doubtful regions masked (not confirmed as faces, did not pass)</td><td>1</td></tr>" in text
    assert "Quarantined and failed samples (3)" in text  # the per-sample list stays


def test_utility_is_plotted_and_unmeasured_faces_are_counted(tmp_path: Path) -> None:
    def measured(index: int, records: list[dict[str, Any]]) -> None:
        if index == 0:  # shard 1's anonymized face stays unmeasured (nulls)
            utility = {"yaw_change": -4.0, "pitch_change": 2.5, "roll_change": 1.0, "landmark_drift": 0.04}
            records[0]["faces"][0] |= utility | {"eye_change": 0.01, "utility_flags": ["pose"]}

    layout = rebuilt(tmp_path / "out", measured)
    text = render_report(layout.root, tmp_path / "r.html").read_text(encoding="utf-8")
    assert (
        "(faces: 2). Plotted: 1 with both a distance and a pose change; left out, unmeasured (a null value): 1" in text
    )
    assert "<tr><td>pose_change</td><td>1</td><td>1</td><td>4</td><td>4</td></tr>" in text
    assert "<tr><td>mouth_change</td><td>0</td><td>2</td><td>-</td><td>-</td></tr>" in text
    assert "<tr><td>pose</td><td>1</td></tr>" in text  # the utility flag
    for uri in Page(text).images():
        assert_plot(uri)


def test_the_gallery_is_off_by_default_and_shows_at_most_n_released_faces(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output_with_images(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    text = render_report(layout.root, tmp_path / "off.html").read_text(encoding="utf-8")
    assert "Gallery" not in text and "data:image/jpeg" not in text

    text = render_report(layout.root, tmp_path / "one.html", gallery=1).read_text(encoding="utf-8")
    assert "Gallery of released faces (1 of at most 1)" in text and "personal-looking data" in text
    (thumbnail,) = [uri for uri in Page(text).images() if uri.startswith("data:image/jpeg")]
    image = decoded(thumbnail, "jpeg")
    assert image.format == "JPEG" and 0 < max(image.size) <= 96

    text = render_report(layout.root, tmp_path / "all.html", gallery=10).read_text(encoding="utf-8")
    thumbnails = [uri for uri in Page(text).images() if uri.startswith("data:image/jpeg")]
    assert len(thumbnails) == 2  # one anonymized face per shard; never the quarantined ones
    gallery = text[text.index("Gallery of released faces") :]
    assert sample_key(0, 0) in gallery and sample_key(1, 0) in gallery
    assert sample_key(0, 2) not in gallery and sample_key(1, 2) not in gallery


def test_the_gallery_skips_what_it_cannot_read_or_trust(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")  # its "images" are not images
    text = render_report(layout.root, tmp_path / "r.html", gallery=3).read_text(encoding="utf-8")
    assert "No face could be shown." in text and "the image could not be decoded: 2" in text

    images = make_output_with_images(tmp_path / "images")
    tar = Path(images.tar("data-00001.tar"))
    tar.unlink()
    tar.symlink_to(tmp_path / "out" / "data-00001.tar")  # could point at anything, the originals too
    text = render_report(images.root, tmp_path / "linked.html", gallery=3).read_text(encoding="utf-8")
    assert "Gallery of released faces (1 of at most 3)" in text
    assert "a shard tar is missing or not a regular file (never read): 1" in text
    with pytest.raises(ValueError, match="gallery"):
        render_report(images.root, tmp_path / "bad.html", gallery=-1)


def test_everything_shown_is_escaped(tmp_path: Path, hmac_key: Key) -> None:
    def hostile(index: int, records: list[dict[str, Any]]) -> None:
        records[2] |= {"key": f"<b>k{index}</b>"}
        records[2]["faces"][0]["error"] = "<img src=x onerror=alert(1)>"

    layout = rebuilt(tmp_path / "out", hostile)
    run = {**RUN, "method": {**RUN["method"], "attribute_prompt": "<script>alert(1)</script>"}}
    sign_shards(layout, shard_names(), hmac_key, run)
    text = render_report(layout.root, tmp_path / "r.html", key=hmac_key).read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<b>k0</b>" not in text and "&lt;b&gt;k0&lt;/b&gt;" in text
    page = Page(text)
    assert all(tag != "script" for tag, _ in page.tags)
    assert all(uri.startswith("data:image/png;base64,") for uri in page.images())


def test_a_report_without_manifest_or_scores_still_renders(tmp_path: Path) -> None:
    layout = make_output(tmp_path / "out", shards=1)
    html_path = render_report(layout.root, tmp_path / "folder")
    assert html_path == tmp_path / "folder" / "report.html"
    text = html_path.read_text(encoding="utf-8")
    assert "No signed manifest" in text and "data-00000.tar" in text
    assert "guidance_scale" in text  # parameters taken from the audit records instead
    for uri in Page(text).images():
        assert_plot(uri)
    empty = tmp_path / "empty"
    empty.mkdir()
    text = render_report(str(empty), tmp_path / "empty.html").read_text(encoding="utf-8")
    images = Page(text).images()
    assert len(images) == 4
    for uri in images:
        assert_plot(uri)  # "no distances recorded" (beside the strangers) is still a picture
