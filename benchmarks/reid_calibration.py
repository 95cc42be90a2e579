"""Calibration of the re-identification gate's metric on every real face available offline.

The gate (``raypipe/audit/reid.py``) compares an anonymized face with its original under dlib's
recognizer. This benchmark measures, on real faces, the two ways of scoring such a pair:

- ``euclidean``: distance of dlib's raw 128-d descriptors; same person when < 0.6 (dlib's documented
  rule, the gate's :data:`~raypipe.audit.reid.DEFAULT_THRESHOLD`);
- ``cosine``: the gate's previous rule, cosine of the unit vectors that
  :class:`~raypipe.anonymize.analyzers.DlibAnalyzer` hands the diffusion model; same person when
  >= 0.90 (:data:`COSINE_THRESHOLD`).

Pairs. Genuine: each face against itself after one transform (JPEG q 50/65/80/95; resize 0.5/0.75/1.5/2x;
two crops that never cut into the face box; mirror; Gaussian blur sigma 0.5/1/2; seven lighting
changes), the box mapped through the geometry: 21 per face. The gate must flag every one ("still
re-identifies"). Impostor: every pair of different people, original against original;
``impostor_variants``: every transformed face against every other person's original. Descriptors come
from the gate's own code path, ``DlibAnalyzer.descriptor(image, box)`` with the gate's defaults (HOG,
upsample 1; the face re-found by overlap, else the landmarks fitted to the box); the cosine is that of
the same descriptors made unit vectors.

Faces. 10 people: ``skimage.data.astronaut()``; insightface's ``t1.jpg`` (six people) and
``Tom_Hanks_54745.png``; matplotlib's ``grace_hopper.jpg``; ``skimage.data.camera()`` (HOG finds nothing
there; its box is the one dlib's CNN detector gives, and the gate's fallback fits landmarks to it).
Separately, the 100 face thumbnails of ``skimage.data.lfw_subset()`` (25x25 grey, no identity labels, so
genuine pairs only; three transforms per face, rotating through all but the crops). insightface's
``mask_*.jpg`` and every other image that the installed packages ship show no face.

Measured (``benchmarks/results/reid_calibration.json``: x86_64, 2 cores shared with a test suite, dlib
20.0.1; 210 genuine, 45 impostor, 1,890 variant-impostor pairs, 300 thumbnail pairs; 62 s, 81 s under a heavier load):

=================  =====================  =====================  =============================  ==========
rule               genuine min/med/max    impostor min/med/max   flagged: genuine/imp./variants  margins g/i
=================  =====================  =====================  =============================  ==========
euclidean < 0.6    0.002 / 0.106 / 0.538  0.629 / 0.799 / 0.925  100 % / 0 % / 0.1 % (2)        +.062/+.029
cosine >= 0.90     0.916 / 0.997 / 1.000  0.806 / 0.850 / 0.912  100 % / 2.2 % (1) / 2.9 % (54)  +.016/-.012
=================  =====================  =====================  =============================  ==========

Margins: how far the worst genuine pair (both rules: the cameraman, ``crop halfway``) and the best
impostor pair (both: t1.jpg persons 4 and 5) lie on the right side of the threshold. What the numbers
support: **dlib's raw Euclidean distance with its documented 0.6.** Both rules flag every genuine pair,
but 0.6 lies inside the band that separates genuine from impostor pairs ([0.538, 0.629]) and flags no
pair of different people, while 0.90 lies below cosine's band ([0.912, 0.916]) and flags one. Cosine
also separates worse: that band is 0.030 of the gap between the medians against Euclidean's 0.131
(ratio 4.4), d' 8.8 against 9.6 (Euclidean keeps the descriptor norm that normalisation drops). Cosine 0.90 is
the more conservative rule on these faces (every pair 0.6 flags, it flags too), but not by
construction: its derivation in ``reid.py`` assumes raw norms >= 1.35, and norms measured 1.30 to 1.60
here (1.22 on thumbnails), for which the same bound gives 0.89 (0.88).

Limits. (1) Neither rule protects faces as small as 25 px: on the thumbnails 0.6 flags 92.3 % of
genuine pairs and 0.90 93.3 % (misses under blur sigma 1-2 and 0.5x, i.e. 12 px), and genuine distances
reach 0.78, beyond the closest impostors, so no threshold fixes it: the gate needs a minimum face size
(the real faces at 0.5x, 35-95 px wide, were all flagged, worst 0.24). (2) The impostors are photographs of
different people. An anonymized face keeps hair, ears, pose and background, which dlib's face chip
sees, so the gate's real negatives sit closer to the threshold than these (``reid.py`` measured a face
box painted flat at cosine 0.85); the impostor margin at 0.6 (0.029) is thin, which is why the JSON
carries the whole impostor distribution for the report to plot each face against.

    .venv/bin/python benchmarks/reid_calibration.py            # every face, writes the JSON (60-80 s)
    .venv/bin/python benchmarks/reid_calibration.py --quick    # two faces, four transforms, two thumbnails (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from raypipe.anonymize.analyzers import DlibAnalyzer  # noqa: E402
from raypipe.anonymize.faces import Box  # noqa: E402
from raypipe.audit.reid import DEFAULT_THRESHOLD  # noqa: E402

COSINE_THRESHOLD = 0.90  # the gate's previous rule, on unit vectors
CALIBRATION = ROOT / "raypipe" / "audit" / "calibration.json"

RESULTS = ROOT / "benchmarks" / "results"
# skimage.data.camera(): dlib's HOG detector finds nothing (the face is half behind the camera, turned
# away); dlib's CNN detector (mmod, upsample 1) finds it here with confidence 1.15.
CAMERAMAN_BOX: Box = (189.0, 117.0, 258.0, 186.0)


# ------------------------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class Face:
    """One real face: who it is, where it comes from, the image and the face's box in it."""

    id: str
    person: str
    source: str
    image: np.ndarray
    box: Box


@dataclass(frozen=True)
class Source:
    """An image that packages ship, with one person name per face in left-to-right order."""

    name: str
    load: Callable[[], np.ndarray]
    people: tuple[str, ...]
    box: Box | None = None  # a known box when the gate's detector finds none


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def _read_rgb(path: Path | io.BytesIO) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.ascontiguousarray(np.stack([image] * 3, axis=-1) if image.ndim == 2 else image)


SOURCES = (
    Source("skimage.data.astronaut()", lambda: _skimage("astronaut"), ("Eileen Collins",)),
    Source(
        "insightface/data/images/t1.jpg",
        lambda: _read_rgb(_package_file("insightface", "data", "images", "t1.jpg")),
        tuple(f"t1.jpg person {i}" for i in range(1, 7)),  # a group photo of six different people
    ),
    Source(
        "insightface/data/images/Tom_Hanks_54745.png",
        lambda: _read_rgb(_package_file("insightface", "data", "images", "Tom_Hanks_54745.png")),
        ("Tom Hanks",),
    ),
    Source(
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        lambda: _read_rgb(_package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")),
        ("Grace Hopper",),
    ),
    Source("skimage.data.camera()", lambda: _skimage("camera"), ("cameraman",), CAMERAMAN_BOX),
)
QUICK_SOURCES = ("skimage.data.astronaut()", "matplotlib/mpl-data/sample_data/grace_hopper.jpg")

EXCLUDED = (
    {"source": "insightface/data/images/mask_*.jpg", "reason": "surgical masks, no face"},
    {"source": "other images in site-packages (skimage, matplotlib, scipy)", "reason": "no human face"},
)
# skimage.data.lfw_subset(): 100 real faces from LFW, 25x25 grey, without identity labels. They enter as
# genuine pairs only (no pair of them is known to show two different people), in a group of their own:
# dlib's HOG finds no face that small, so the gate fits the landmarks to the box (the whole thumbnail).
THUMBNAIL_SOURCE = "skimage.data.lfw_subset()"
THUMBNAIL_TRANSFORMS_PER_FACE = 3
QUICK_THUMBNAILS = 2


def load_thumbnails(limit: int | None = None) -> list[Face]:
    """The LFW thumbnails that skimage ships (the first 100 of its 200 images are faces)."""
    import skimage.data

    grey = skimage.data.lfw_subset()[:100]
    faces = []
    for index, thumbnail in enumerate(grey[:limit]):
        image = np.ascontiguousarray(np.stack([np.rint(thumbnail * 255).astype(np.uint8)] * 3, axis=-1))
        height, width = image.shape[:2]
        faces.append(Face(f"{THUMBNAIL_SOURCE}#{index}", "unlabelled", THUMBNAIL_SOURCE, image, (0, 0, width, height)))
    return faces


def load_faces(analyzer: DlibAnalyzer, names: Sequence[str] | None = None) -> tuple[list[Face], list[dict]]:
    """Every face of the sources (or of those named), and a record of each source that could not be used."""
    faces: list[Face] = []
    excluded: list[dict] = []
    for source in SOURCES:
        if names is not None and source.name not in names:
            continue
        try:
            image = source.load()
        except (FileNotFoundError, ImportError) as error:
            excluded.append({"source": source.name, "reason": f"not available: {error}"})
            continue
        boxes = [source.box] if source.box is not None else [f.box for f in analyzer.analyze(image)]
        if len(boxes) != len(source.people):
            raise RuntimeError(f"{source.name}: expected {len(source.people)} faces, dlib found {len(boxes)}")
        for index, (person, box) in enumerate(zip(source.people, boxes)):
            faces.append(Face(f"{source.name}#{index}", person, source.name, image, box))
    return faces, excluded


# -------------------------------------------------------------------------------------- transforms

Transform = Callable[[np.ndarray, Box], tuple[np.ndarray, Box]]


def _jpeg(quality: int) -> Transform:
    def apply(image: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return _read_rgb(buffer), box

    return apply


def _resize(factor: float) -> Transform:
    def apply(image: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
        from PIL import Image

        height, width = image.shape[:2]
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
        sx, sy = size[0] / width, size[1] / height
        return resized, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

    return apply


def _crop(keep: float, face_margin: float | None = None) -> Transform:
    """Cut the image down around the face without cutting into the box: each side keeps ``keep`` of the
    space between the box and the image edge; with ``face_margin``, the left and top sides keep only that
    fraction of the box's size instead (the face ends up near a corner)."""

    def apply(image: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
        height, width = image.shape[:2]
        bx0, by0 = max(0.0, box[0]), max(0.0, box[1])
        bx1, by1 = min(float(width), box[2]), min(float(height), box[3])
        if face_margin is None:
            x0, y0 = round(bx0 * (1 - keep)), round(by0 * (1 - keep))
        else:
            x0 = max(0, round(bx0 - face_margin * (bx1 - bx0)))
            y0 = max(0, round(by0 - face_margin * (by1 - by0)))
        x1, y1 = round(bx1 + keep * (width - bx1)), round(by1 + keep * (height - by1))
        cropped = np.ascontiguousarray(image[y0:y1, x0:x1])
        return cropped, (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)

    return apply


def _mirror(image: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
    width = image.shape[1]
    return np.ascontiguousarray(image[:, ::-1]), (width - box[2], box[1], width - box[0], box[3])


def _blur(sigma: float) -> Transform:
    def apply(image: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
        from scipy.ndimage import gaussian_filter

        blurred = gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0))
        return _to_uint8(blurred), box

    return apply


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _light(change: Callable[[np.ndarray], np.ndarray]) -> Transform:
    def apply(image: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
        return _to_uint8(change(image.astype(np.float32))), box

    return apply


def _side_light(x: np.ndarray) -> np.ndarray:
    gain = np.linspace(0.5, 1.2, x.shape[1], dtype=np.float32)  # light falling from the right
    return x * gain[None, :, None]


TRANSFORMS: dict[str, Transform] = {
    **{f"jpeg q{q}": _jpeg(q) for q in (50, 65, 80, 95)},
    **{f"resize {f}x": _resize(f) for f in (0.5, 0.75, 1.5, 2.0)},
    "crop halfway": _crop(0.5),
    "crop off-centre": _crop(1.0, face_margin=0.1),
    "mirror": _mirror,
    **{f"blur sigma {s}": _blur(s) for s in (0.5, 1.0, 2.0)},
    "darker x0.6": _light(lambda x: x * 0.6),
    "brighter x1.4": _light(lambda x: x * 1.4),
    "gamma 0.6": _light(lambda x: 255.0 * (x / 255.0) ** 0.6),
    "gamma 1.6": _light(lambda x: 255.0 * (x / 255.0) ** 1.6),
    "contrast x0.5": _light(lambda x: x.mean() + 0.5 * (x - x.mean())),
    "warm light": _light(lambda x: x * np.array([1.15, 1.0, 0.8], dtype=np.float32)),
    "side light": _light(_side_light),
}
QUICK_TRANSFORMS = ("jpeg q50", "resize 0.5x", "mirror", "blur sigma 2.0")


# ------------------------------------------------------------------------------------- descriptors


class MeasuredDlib(DlibAnalyzer):
    """The gate's default analyzer, which also reports raw descriptors and detects once per image."""

    def __init__(self) -> None:
        super().__init__()
        self._detections: dict[tuple, list] = {}

    def _detect(self, image: np.ndarray) -> list:
        # the six faces of t1.jpg share each transformed image: detection is deterministic, run it once
        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key not in self._detections:
            self._detections[key] = super()._detect(image)
        return self._detections[key]

    def descriptors(self, image: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """(raw descriptor the gate compares, its unit vector) of the face at ``box``."""
        raw = self.descriptor(image, box)
        if raw is None:
            raise RuntimeError(f"dlib gave no descriptor for the face at {box}")
        raw = np.asarray(raw, dtype=np.float64)
        return raw, raw / np.linalg.norm(raw)


Descriptor = tuple[np.ndarray, np.ndarray]


def pair_scores(a: Descriptor, b: Descriptor) -> dict[str, float]:
    """Both metrics for one pair: raw Euclidean distance and the gate's cosine of the unit vectors."""
    similarity = float(a[1] @ b[1])
    return {"euclidean": round(float(np.linalg.norm(a[0] - b[0])), 5), "cosine": round(similarity, 5)}


# ---------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Rule:
    """A metric and its same-person threshold; ``lower_is_same`` for distances."""

    metric: str
    threshold: float
    lower_is_same: bool

    def same(self, score: float) -> bool:
        return score < self.threshold if self.lower_is_same else score >= self.threshold

    @property
    def text(self) -> str:
        return f"{self.metric} {'<' if self.lower_is_same else '>='} {self.threshold}"


RULES = (
    Rule("euclidean", DEFAULT_THRESHOLD, lower_is_same=True),
    Rule("cosine", COSINE_THRESHOLD, lower_is_same=False),
)


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
        "mean": round(statistics.fmean(values), 4),
        "stdev": round(statistics.pstdev(values), 4),
    }


def summarize(rule: Rule, genuine: Sequence[dict], impostor: Sequence[dict], variants: Sequence[dict]) -> dict:
    """Both distributions, flagged fractions and margins of one metric at its threshold.

    Margins are signed so that positive is safe: ``genuine`` is how far the worst genuine pair lies on
    the same-person side of the threshold (for a distance: threshold - largest genuine distance),
    ``impostor`` how far the best impostor pair lies on the other side (smallest impostor distance -
    threshold). ``normalised_margin`` divides each by the gap between the two medians, so that the two
    metrics, on different scales, can be compared.
    """
    g = [p[rule.metric] for p in genuine]
    i = [p[rule.metric] for p in impostor]
    v = [p[rule.metric] for p in variants]
    sign = 1.0 if rule.lower_is_same else -1.0
    worst_genuine = max(g) if rule.lower_is_same else min(g)
    best_impostor = min(i) if rule.lower_is_same else max(i)
    margins = {
        "genuine": round(sign * (rule.threshold - worst_genuine), 4),
        "impostor": round(sign * (best_impostor - rule.threshold), 4),
    }
    spread = abs(statistics.median(i) - statistics.median(g))
    pooled = ((statistics.pvariance(g) + statistics.pvariance(i)) / 2) ** 0.5
    worst = next(p for p in genuine if p[rule.metric] == worst_genuine)
    best = next(p for p in impostor if p[rule.metric] == best_impostor)
    return {
        "rule": rule.text,
        "threshold": rule.threshold,
        "genuine": _stats(g),
        "impostor": _stats(i),
        "impostor_variants": _stats(v) if v else None,
        "genuine_flagged_fraction": round(sum(map(rule.same, g)) / len(g), 4),
        "impostor_flagged_fraction": round(sum(map(rule.same, i)) / len(i), 4),
        "impostor_variants_flagged_fraction": round(sum(map(rule.same, v)) / len(v), 4) if v else None,
        "margins": margins,
        "normalised_margin": {k: round(m / spread, 4) if spread else None for k, m in margins.items()},
        # width of the band between the worst genuine and the best impostor pair, over the gap between the
        # medians: how much room a threshold has, on a scale both metrics share (negative: they overlap)
        "normalised_gap": round(sign * (best_impostor - worst_genuine) / spread, 4) if spread else None,
        "d_prime": round(spread / pooled, 3) if pooled else None,
        "separating_interval": sorted([worst_genuine, best_impostor])
        if sign * (best_impostor - worst_genuine) > 0
        else None,
        "worst_genuine": {"face": worst["face"], "transform": worst["transform"], "score": worst_genuine},
        "best_impostor": {"a": best["a"], "b": best["b"], "score": best_impostor},
    }


def verdict(metrics: dict[str, dict]) -> dict:
    """The metric the numbers support: it flags every genuine pair; then the fewest impostor pairs; then
    the most room between the worst genuine and the best impostor pair (``normalised_gap``)."""
    usable = [m for m, s in metrics.items() if s["genuine_flagged_fraction"] == 1.0]
    if not usable:
        return {"metric": None, "reason": "no metric flags every genuine pair at its threshold"}
    best = min(
        usable,
        key=lambda m: (metrics[m]["impostor_flagged_fraction"], -(metrics[m]["normalised_gap"] or 0)),
    )
    return {"metric": best, "rule": metrics[best]["rule"], "usable": usable}


# -------------------------------------------------------------------------------------------- main


def _device() -> dict[str, Any]:
    import dlib

    return {
        "name": f"{platform.machine()} CPU ({os.cpu_count()} cores)",
        "python": platform.python_version(),
        "dlib": dlib.__version__,
        "dlib_cuda": bool(dlib.DLIB_USE_CUDA),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def measure(
    analyzer: MeasuredDlib, faces: Sequence[Face], transforms_for: Callable[[int], Sequence[str]]
) -> tuple[dict[str, Descriptor], list[dict], list[np.ndarray]]:
    """Descriptors of the originals, one genuine pair per (face, transform), and every descriptor made."""
    originals = {face.id: analyzer.descriptors(face.image, face.box) for face in faces}
    made = list(originals.values())
    genuine = []
    for index, face in enumerate(faces):
        for name in transforms_for(index):
            image, box = TRANSFORMS[name](face.image, face.box)
            variant = analyzer.descriptors(image, box)
            made.append(variant)
            genuine.append(
                {"face": face.id, "transform": name, **pair_scores(originals[face.id], variant), "_d": variant}
            )
    return originals, genuine, [raw for raw, _ in made]


def _strip(pairs: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "_d"} for p in pairs]


def thumbnail_summary(rule: Rule, genuine: Sequence[dict]) -> dict:
    """Genuine-only statistics of the thumbnails at one metric's threshold."""
    g = [p[rule.metric] for p in genuine]
    missed = [p for p in genuine if not rule.same(p[rule.metric])]
    by_transform: dict[str, list[float]] = {}
    for p in missed:
        by_transform.setdefault(p["transform"], []).append(p[rule.metric])
    return {
        "rule": rule.text,
        "genuine": _stats(g),
        "genuine_flagged_fraction": round(1 - len(missed) / len(g), 4),
        "not_flagged_by_transform": {k: len(v) for k, v in sorted(by_transform.items())},
    }


def disagreements(groups: dict[str, Sequence[dict]]) -> dict[str, Any]:
    """Pairs that one rule calls the same person and the other does not, per group of pairs."""
    euclidean, cos = RULES
    found: dict[str, Any] = {}
    for group, pairs in groups.items():
        only_e = [p for p in pairs if euclidean.same(p["euclidean"]) and not cos.same(p["cosine"])]
        only_c = [p for p in pairs if cos.same(p["cosine"]) and not euclidean.same(p["euclidean"])]
        found[group] = {
            "only_euclidean_flags": len(only_e),
            "only_cosine_flags": len(only_c),
            "examples": _strip(only_e[:3] + only_c[:3]),
        }
    return found


def _norms(raws: Sequence[np.ndarray]) -> dict[str, float]:
    values = [float(np.linalg.norm(raw)) for raw in raws]
    return {"min": round(min(values), 4), "max": round(max(values), 4)}


def run(quick: bool) -> dict[str, Any]:
    """Measure every pair and return the report (see the module docstring)."""
    started = time.perf_counter()
    analyzer = MeasuredDlib()
    faces, excluded = load_faces(analyzer, QUICK_SOURCES if quick else None)
    names = QUICK_TRANSFORMS if quick else tuple(TRANSFORMS)
    originals, genuine, raws = measure(analyzer, faces, lambda _: names)
    impostor = [
        {"a": a.id, "b": b.id, **pair_scores(originals[a.id], originals[b.id])}
        for a, b in combinations(faces, 2)
        if a.person != b.person
    ]
    by_id = {face.id: face for face in faces}
    variants = [
        {"a": p["face"], "transform": p["transform"], "b": other.id, **pair_scores(p["_d"], originals[other.id])}
        for p in genuine
        for other in faces
        if other.person != by_id[p["face"]].person
    ]
    metrics = {rule.metric: summarize(rule, genuine, impostor, variants) for rule in RULES}

    # thumbnails: every face, a rotating subset of the transforms (crops are moot: the box is the image)
    thumbs = load_thumbnails(QUICK_THUMBNAILS if quick else None)
    cycle = [n for n in names if not n.startswith("crop")]
    per_face = min(THUMBNAIL_TRANSFORMS_PER_FACE, len(cycle))
    _, thumb_genuine, thumb_raws = measure(
        analyzer, thumbs, lambda i: [cycle[(i * per_face + k) % len(cycle)] for k in range(per_face)]
    )
    smallest = _norms(raws + thumb_raws)["min"]
    return {
        "benchmark": "reid_calibration",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device(),
        "settings": {
            "quick": quick,
            "recognizer": analyzer.name,
            "upsample": analyzer.upsample,
            "adjust_threshold": analyzer.adjust_threshold,
            "transforms": list(names),
        },
        "faces": [
            {"id": f.id, "person": f.person, "source": f.source, "box": [round(v, 1) for v in f.box]} for f in faces
        ],
        "excluded": [*excluded, *EXCLUDED],
        "descriptor_norms": {"faces": _norms(raws), "thumbnails": _norms(thumb_raws)},
        # the cosine at or above which every pair at raw distance < 0.6 lies, at the smallest norm measured
        # (raypipe.audit.reid derives its 0.90 from the same bound with a smallest norm of 1.35)
        "cosine_bound_for_distance_0.6": round(1 - DEFAULT_THRESHOLD**2 / (2 * smallest**2), 4),
        "metrics": metrics,
        "verdict": verdict(metrics),
        "rules_disagree": disagreements(
            {"genuine": genuine, "impostor": impostor, "impostor_variants": variants, "thumbnails": thumb_genuine}
        ),
        "genuine": _strip(genuine),
        "impostor": impostor,
        "impostor_scores": {rule.metric: sorted(p[rule.metric] for p in impostor) for rule in RULES},
        # each transformed face against every other person's original: the scores, and the pairs that a rule flags
        "impostor_variants": {
            "n": len(variants),
            "scores": {rule.metric: sorted(p[rule.metric] for p in variants) for rule in RULES},
            "flagged": {rule.metric: [p for p in variants if rule.same(p[rule.metric])] for rule in RULES},
        },
        "thumbnails": {
            "source": THUMBNAIL_SOURCE,
            "faces": len(thumbs),
            "size_px": list(thumbs[0].image.shape[:2]) if thumbs else None,
            "transforms_per_face": per_face,
            "metrics": {rule.metric: thumbnail_summary(rule, thumb_genuine) for rule in RULES},
            "genuine": _strip(thumb_genuine),
        },
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def _print_summary(report: dict[str, Any]) -> None:
    for s in report["metrics"].values():
        g, i = s["genuine"], s["impostor"]
        print(
            f"{s['rule']:>16}: genuine {g['min']:.3f}/{g['median']:.3f}/{g['max']:.3f} (n={g['n']}), "
            f"impostor {i['min']:.3f}/{i['median']:.3f}/{i['max']:.3f} (n={i['n']}); "
            f"flagged genuine {s['genuine_flagged_fraction']:.1%}, impostor {s['impostor_flagged_fraction']:.1%}, "
            f"variant impostors {s['impostor_variants_flagged_fraction']:.1%}; "
            f"margins genuine {s['margins']['genuine']:+.3f} impostor {s['margins']['impostor']:+.3f} "
            f"(normalised {s['normalised_margin']['genuine']:+.3f} / {s['normalised_margin']['impostor']:+.3f}); "
            f"normalised gap {s['normalised_gap']:+.3f}; d' {s['d_prime']}"
        )
    euclidean, cos = report["metrics"]["euclidean"], report["metrics"]["cosine"]
    ratios = {
        "normalised gap": (euclidean["normalised_gap"], cos["normalised_gap"]),
        "d'": (euclidean["d_prime"], cos["d_prime"]),
        **{
            f"normalised {k} margin": (euclidean["normalised_margin"][k], cos["normalised_margin"][k])
            for k in ("genuine", "impostor")
        },
    }
    for name, (a, b) in ratios.items():
        if a is not None and b:
            print(f"{name}, euclidean / cosine: {a / b:.2f}")
    for s in report["thumbnails"]["metrics"].values():
        g = s["genuine"]
        print(
            f"{s['rule']:>16}: {report['thumbnails']['faces']} thumbnails {report['thumbnails']['size_px']} px, "
            f"genuine {g['min']:.3f}/{g['median']:.3f}/{g['max']:.3f} (n={g['n']}), "
            f"flagged {s['genuine_flagged_fraction']:.1%}, not flagged by transform {s['not_flagged_by_transform']}"
        )
    print(
        f"descriptor norms {report['descriptor_norms']}; "
        f"cosine bound for 0.6: {report['cosine_bound_for_distance_0.6']}"
    )
    split = {g: (d["only_euclidean_flags"], d["only_cosine_flags"]) for g, d in report["rules_disagree"].items()}
    print(f"pairs flagged by only one rule (euclidean only, cosine only): {split}")
    print(f"verdict: {report['verdict']}; runtime {report['runtime_s']} s")


def packaged_calibration(report: dict[str, Any]) -> dict[str, Any]:
    """What raypipe ships of a full run (``raypipe/audit/calibration.json``): the gate's metric, its
    threshold, and the distances of every pair of different people, for the report."""
    euclidean = report["metrics"]["euclidean"]
    return {
        "source": "benchmarks/reid_calibration.py",
        "date": report["date"],
        "recognizer": report["settings"]["recognizer"],
        "metric": "euclidean",
        "threshold": euclidean["threshold"],
        "genuine": {"n": euclidean["genuine"]["n"], "max": euclidean["genuine"]["max"]},
        "impostor_distances": report["impostor_scores"]["euclidean"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two faces and four transforms, for tests")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / ("reid_calibration-quick.json" if args.quick else "reid_calibration.json")
    report = run(args.quick)
    _print_summary(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    if not args.quick and args.out is None:
        CALIBRATION.write_text(json.dumps(packaged_calibration(report), indent=1) + "\n")
        print(f"wrote {CALIBRATION} (the impostor distribution the audit report plots faces against)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
