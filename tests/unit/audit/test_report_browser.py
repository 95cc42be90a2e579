"""The report in a real headless browser (Debian's Chromium): every image decodes, nothing is fetched.

A copy of the report gets a small probe script, placed before the report's Content-Security-Policy so
that the policy does not block it. After the page has loaded, the probe writes into the title how many
images did not decode (``naturalWidth == 0``), how many resources the page requested, and how many
requests the policy refused. Chromium runs with every host name resolving to nothing, so even a
request that slipped through could not reach out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from raypipe.audit.report import render_report
from raypipe.audit.signing import Key

from .conftest import make_output_with_images, shard_names, sign_shards

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium); the CI script installs it",
)

PROBE = """<script>
window.refused = 0;
document.addEventListener('securitypolicyviolation', () => { window.refused += 1; });
window.addEventListener('load', () => {
  const broken = Array.from(document.images).filter((img) => img.naturalWidth === 0).length;
  const requests = performance.getEntriesByType('resource').length;
  document.title = `broken=${broken} requests=${requests} refused=${window.refused} images=${document.images.length}`;
});
</script>"""
TITLE = re.compile(r"<title>broken=(\d+) requests=(\d+) refused=(\d+) images=(\d+)</title>")
HEADING = re.compile(r"<h[12][^>]*>(.*?)</h[12]>", re.S)


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after load, as headless Chromium prints it."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--dump-dom",
        page.as_uri(),
    ]
    env = {**os.environ, "HOME": str(profile)}  # nothing of the browser's state outside tmp_path
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_report_renders_in_a_browser_with_no_broken_image_and_no_request(tmp_path: Path, hmac_key: Key) -> None:
    layout = make_output_with_images(tmp_path / "out")
    sign_shards(layout, shard_names(), hmac_key)
    report = render_report(layout.root, tmp_path / "report.html", key=hmac_key, gallery=2)
    text = report.read_text(encoding="utf-8")
    assert text.count("<head>") == 1
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")

    dom = dump_dom(probe, tmp_path / "profile")
    found = TITLE.search(dom)
    assert found, dom[:2000]
    broken, requests, refused, images = (int(n) for n in found.groups())
    assert (broken, requests, refused) == (0, 0, 0)
    assert images == 6  # four plots and two gallery thumbnails
    headings = [re.sub(r"<[^>]+>", "", h).strip() for h in HEADING.findall(dom)]
    assert headings[0] == "Verified OK"
    for heading in ("raypipe audit report", "Samples per status", "Re-identification distance", "Shards"):
        assert heading in headings
    assert "Gallery of released faces (2 of at most 2)" in headings
