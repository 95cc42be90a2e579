"""Seconds per image of the classic methods (blur, pixelate, mask) on the CPU, against detection alone.

    .venv/bin/python benchmarks/classic_cpu.py            # every method, the real-photo mix, best of 3
    .venv/bin/python benchmarks/classic_cpu.py --quick    # one method, two photos, one repeat (tests)

What is timed is raypipe's own ``ClassicAnonymizer.anonymize`` on each photo of ``benchmarks/photos.py``:
dlib detection, the method on every face box, and the re-identification gate (its own detections of
the original and of the result, one comparison per face, the missed-face search). The baseline, in the
same run, is dlib's detection alone on the same photos: the least any method that looks at every image
must spend. Single process, one thread (``OMP_NUM_THREADS`` as the environment sets it).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.photos import real_photos
from benchmarks.report import write_report


def best_of(repeats: int, work: Any) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    from raypipe.anonymize.analyzers import build_analyzer
    from raypipe.anonymize.pipeline import ClassicAnonymizer
    from raypipe.config import MethodConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["blur", "pixelate", "mask"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="blur on two photos, one repeat (tests)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    photos = real_photos()
    methods, repeats = args.methods, args.repeats
    if args.quick:
        photos = {name: photos[name] for name in ("astronaut", "coffee")}
        methods, repeats = ["blur"], 1
    analyzer = build_analyzer("dlib")
    images = list(photos.values())
    pixels = sum(image.shape[0] * image.shape[1] for image in images)
    detect_s = best_of(repeats, lambda: [analyzer.analyze(image) for image in images])
    faces = sum(len(analyzer.analyze(image)) for image in images)
    rows = []
    for name in methods:
        classic = ClassicAnonymizer(analyzer, MethodConfig(name=name))
        results: list[Any] = []

        def anonymize_all(classic: ClassicAnonymizer = classic, results: list[Any] = results) -> None:
            results.append([classic.anonymize(image, "k") for image in images])

        seconds = best_of(repeats, anonymize_all)
        verdicts = [r.status.value for r in results[-1]]
        rows.append(
            {
                "method": name,
                "seconds": round(seconds, 4),
                "seconds_per_image": round(seconds / len(images), 4),
                "seconds_per_face": round(seconds / faces, 4) if faces else None,
                "over_detection_alone": round(seconds / detect_s, 2),
                "statuses": {status: verdicts.count(status) for status in sorted(set(verdicts))},
            }
        )
        print(
            f"{name:9s} {seconds / len(images):.3f} s per image ({seconds / detect_s:.2f}x detection alone), "
            f"statuses {rows[-1]['statuses']}"
        )
    report = {
        "benchmark": "classic_cpu" + (" --quick" if args.quick else ""),
        "device": {"name": f"{platform.machine()} CPU", "type": "cpu", "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "settings": {"photos": list(photos), "repeats": repeats, "analyzer": "dlib"},
        "images": len(images),
        "faces": faces,
        "megapixels": round(pixels / 1e6, 2),
        "detection_alone_s": round(detect_s, 4),
        "rows": rows,
    }
    path = write_report(report, "classic_cpu", args.quick, args.out)
    print(f"detection alone {detect_s / len(images):.3f} s per image; {len(images)} images, {faces} faces -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
