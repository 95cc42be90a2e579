"""What the re-identification gate costs per image in the compose stage, before and after sharing
detections: 1, 6 and 20 real faces at about 1 and 3 megapixels.

- ``per-face`` (the baseline, how the gate worked before): each face's embedding, in the original and
  in the released image, ran its own full-image detection to frame the face, and the missed-face check
  one more: 2k + 1 detections for k faces.
- ``shared`` (now, :class:`raypipe.anonymize.pipeline.Gate`): one detection of the original and one of
  the released image frame every face and serve the missed-face check: 2 detections, whatever k.

Both give the same verdicts (checked here). Faces are real: the astronaut (``skimage.data``) and the
six people of insightface's group photo, pasted on a grey canvas for 20 faces. The released image is
the original with its pixels changed slightly (so it is searched again); the recognizer is dlib's, as
in the job.

    .venv/bin/python benchmarks/compose_gate.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raypipe.anonymize.pipeline import AnonymizationResult, Gate
from raypipe.audit.reid import missed_faces
from raypipe.records import FaceRecord, FaceStatus, Status

RESULTS = Path(__file__).parent / "results" / "compose_gate.json"
SIZES = {"1MP": (1200, 860), "3MP": (2100, 1450)}


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _group() -> np.ndarray:
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def _tiles(size: tuple[int, int], gate: Gate) -> np.ndarray:
    """20 faces: crops around the faces of the group photo and the astronaut, on a grey canvas."""
    crops = []
    for image in (_group(), _astronaut()):
        for x1, y1, x2, y2 in gate.reid.detect(image):
            w, h = x2 - x1, y2 - y1
            box = (max(0, int(x1 - w)), max(0, int(y1 - h)), int(x2 + w), int(y2 + h))
            crops.append(Image.fromarray(image).crop(box))
    canvas = Image.new("RGB", size, (128, 128, 128))
    columns, rows = 5, 4
    cell = (size[0] // columns, size[1] // rows)
    for index in range(columns * rows):
        crop = crops[index % len(crops)].resize((cell[0] - 10, cell[1] - 10))
        canvas.paste(crop, ((index % columns) * cell[0] + 5, (index // columns) * cell[1] + 5))
    return np.asarray(canvas)


def scene(faces: int, size: tuple[int, int], gate: Gate) -> np.ndarray:
    if faces == 1:
        canvas = np.full((size[1], size[0], 3), 128, np.uint8)
        face = _resized(_astronaut(), (size[1] // 2, size[1] // 2))
        canvas[: face.shape[0], : face.shape[1]] = face
        return canvas
    if faces == 6:
        return _resized(_group(), size)
    return _tiles(size, gate)


def per_face(gate: Gate, original: np.ndarray, released: np.ndarray, boxes: list[Any]) -> list[float | None]:
    checks = gate.reid.check(original, released, boxes)  # detections inside every embedding
    missed_faces(released, boxes, gate.reid.recognizer)  # type: ignore[arg-type]
    return [c.distance for c in checks]


def shared(gate: Gate, original: np.ndarray, released: np.ndarray, boxes: list[Any]) -> list[float | None]:
    records = [FaceRecord(i, box, 1.0, FaceStatus.ANONYMIZED) for i, box in enumerate(boxes)]
    result = gate(original, AnonymizationResult(Status.ANONYMIZED, released, records))
    return [f.distance for f in result.faces]


def measure(faces: int, size_name: str, gate: Gate) -> dict[str, Any]:
    original = scene(faces, SIZES[size_name], gate)
    boxes = gate.reid.detect(original)
    released = original.copy()
    released[::3, ::3] = (released[::3, ::3] * 0.9).astype(np.uint8)
    row: dict[str, Any] = {"faces_wanted": faces, "faces_found": len(boxes), "size": size_name}
    row["pixels"] = int(original.shape[0] * original.shape[1])
    verdicts = {}
    for name, step in (("per-face", per_face), ("shared", shared)):
        started = time.perf_counter()
        verdicts[name] = step(gate, original, released, boxes)
        row[f"{name}_s"] = round(time.perf_counter() - started, 3)
    row["same_verdicts"] = verdicts["per-face"] == verdicts["shared"]
    row["speedup"] = round(row["per-face_s"] / max(row["shared_s"], 1e-9), 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 face at 1 MP only (for tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    gate = Gate()
    plan = [(1, "1MP")] if args.quick else [(k, s) for s in SIZES for k in (1, 6, 20)]
    rows = []
    for faces, size in plan:
        row = measure(faces, size, gate)
        rows.append(row)
        print(
            f"{faces:>2} faces ({row['faces_found']} found) at {size}: per-face {row['per-face_s']:6.2f}s, "
            f"shared {row['shared_s']:6.2f}s, {row['speedup']}x, same verdicts: {row['same_verdicts']}"
        )
    record = {
        "benchmark": "compose_gate",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "recognizer": gate.recognizer_name,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
