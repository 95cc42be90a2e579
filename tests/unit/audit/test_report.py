"""The human report renders: HTML with its sections, plots that are real PNG images, values escaped."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from raypipe.audit.report import render_report
from raypipe.audit.signing import Key

from .conftest import RUN, make_output, sample_key, shard_names, sign_shards


def plots_of(html_path: Path) -> list[Path]:
    return [html_path.with_name(f"{html_path.stem}-{name}.png") for name in ("counts", "distance")]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 2  # something was drawn


def test_report_of_a_signed_run(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output(tmp_path / "out")
    run = {**RUN, "method": {**RUN["method"], "attribute_prompt": "<script>alert(1)</script>"}}
    sign_shards(layout, shard_names(), hmac_key, run)
    html_path = render_report(layout.root, tmp_path / "report" / "audit.html")
    assert html_path == tmp_path / "report" / "audit.html"
    for png in plots_of(html_path):
        assert_png(png)
    text = html_path.read_text(encoding="utf-8")
    for heading in ("Samples per status", "Faces", "Re-identification distance", "Shards", "Parameters and models"):
        assert heading in text
    assert "Quarantined and failed samples (2)" in text
    for shard_index in range(2):
        assert sample_key(shard_index, 2) in text  # each quarantined sample, with its reason
    assert "reidentified (distance 0.250 &lt; 0.600)" in text
    assert "4 faces scored by dlib-hog; threshold(s): 0.6; 2 below the threshold" in text
    # Faces per status, and how many of them are in released samples.
    assert "<tr><td>anonymized</td><td>2</td><td>2</td></tr>" in text
    assert "<tr><td>reidentified</td><td>2</td><td>0</td></tr>" in text
    assert "audit-counts.png" in text and "audit-distance.png" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert hmac_key.key_id in text
    assert json.loads(Path(layout.state("manifest.json")).read_text())["records"]["merkle_root"] in text


def test_report_without_manifest_or_scores_still_renders(tmp_path: Path) -> None:
    layout = make_output(tmp_path / "out", shards=1)
    html_path = render_report(layout.root, tmp_path / "folder")
    assert html_path == tmp_path / "folder" / "report.html"
    text = html_path.read_text(encoding="utf-8")
    assert "No signed manifest" in text and "data-00000.tar" in text
    assert "guidance_scale" in text  # parameters taken from the audit records instead
    for png in plots_of(html_path):
        assert_png(png)
    empty = tmp_path / "empty"
    empty.mkdir()
    for png in plots_of(render_report(str(empty), tmp_path / "empty.html")):
        assert_png(png)  # "no distances recorded" (beside the strangers) is still a picture
