"""The real photos available offline that the benchmarks mix (0 to 6 faces each, as dlib's HOG finds them).

skimage's astronaut (1 face), camera (0: HOG misses him), coffee and chelsea the cat (0), insightface's
t1.jpg (6) and Tom Hanks (1), matplotlib's Grace Hopper (1), and the left and right halves of t1.jpg
(3 each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def real_photos() -> dict[str, np.ndarray]:
    """Name -> RGB uint8 array (contiguous) of every photo of the mix."""
    import insightface
    import matplotlib
    from PIL import Image
    from skimage import data

    insight = Path(insightface.__file__).parent / "data" / "images"
    group = np.asarray(Image.open(insight / "t1.jpg").convert("RGB"))
    photos = {
        "astronaut": data.astronaut(),
        "camera": np.stack([data.camera()] * 3, axis=-1),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "t1.jpg": group,
        "t1.jpg left half": group[:, : group.shape[1] // 2],
        "t1.jpg right half": group[:, group.shape[1] // 2 :],
        "Tom_Hanks_54745.png": np.asarray(Image.open(insight / "Tom_Hanks_54745.png").convert("RGB")),
        "grace_hopper.jpg": np.asarray(
            Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
        ),
    }
    return {name: np.ascontiguousarray(image) for name, image in photos.items()}
