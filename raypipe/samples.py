"""Small WebDataset shards built from real public-domain photos, for the quick start and tests.

Photos: NASA's astronaut portrait and other images shipped with scikit-image, and insightface's
group photo ``t1.jpg`` when insightface is installed. Each sample has an image plus ``.json``,
``.txt`` and ``.cls`` members, so a run shows faces anonymized, faceless images and non-image
members copied byte for byte. :func:`make_sample_tables` writes the same samples as Parquet tables,
laid out as Hugging Face ``datasets`` writes an image dataset.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from raypipe.io.tars import Sample, write_tar


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) of the photos, faces first."""
    from skimage import data

    photos = [("astronaut", data.astronaut())]
    group = _insightface_group_photo()
    if group is not None:
        photos.append(("group", group))
    photos += [("coffee", data.coffee()), ("chelsea", data.chelsea()), ("rocket", data.rocket())]
    return [(name, np.ascontiguousarray(img[:, :, :3])) for name, img in photos]


def _insightface_group_photo() -> np.ndarray | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("insightface")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg"
    if not path.is_file():
        return None
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def make_sample_shards(folder: str | os.PathLike[str], shards: int = 3, samples_per_shard: int = 5) -> list[str]:
    """Write ``shards`` tars ``sample-{00000..}.tar`` into ``folder``; returns their paths."""
    photos = [(name, _jpeg(rgb)) for name, rgb in sample_photos()]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    index = 0
    for shard in range(shards):
        samples = []
        for _ in range(samples_per_shard):
            name, jpeg = photos[index % len(photos)]
            key = f"{index:06d}"
            meta = json.dumps({"source": name, "index": index}).encode()
            samples.append(
                Sample(
                    key=key,
                    members=[
                        (f"{key}.jpg", jpeg),
                        (f"{key}.json", meta),
                        (f"{key}.txt", f"a photo: {name}".encode()),
                        (f"{key}.cls", str(index % 3).encode()),
                    ],
                )
            )
            index += 1
        path = out / f"sample-{shard:05d}.tar"
        with open(path, "wb") as fh:
            write_tar(samples, fh)
        paths.append(str(path))
    return paths


def make_sample_tables(folder: str | os.PathLike[str], tables: int = 3, rows_per_table: int = 5) -> list[str]:
    """Write ``tables`` Parquet tables ``sample-{00000..}.parquet`` into ``folder``: an ``image`` struct
    ``{bytes, path}``, a ``text`` and a ``label`` column, and Hugging Face's features as schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    photos = [(name, _jpeg(rgb)) for name, rgb in sample_photos()]
    features = {
        "image": {"_type": "Image"},
        "text": {"dtype": "string", "_type": "Value"},
        "label": {"dtype": "int64", "_type": "Value"},
    }
    schema = pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("text", pa.string()),
            ("label", pa.int64()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in range(tables):
        rows = []
        for row in range(rows_per_table):
            index = table * rows_per_table + row
            name, jpeg = photos[index % len(photos)]
            rows.append(
                {"image": {"bytes": jpeg, "path": f"{name}.jpg"}, "text": f"a photo: {name}", "label": index % 3}
            )
        path = out / f"sample-{table:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        paths.append(str(path))
    return paths


def make_sample_files(folder: str | os.PathLike[str], folders: int = 3, files_per_folder: int = 5) -> list[str]:
    """Write a tree of files into ``folder``: ``sample-{00000..}/`` each with ``files_per_folder`` photos
    and a ``.json`` of metadata beside each (one sample per photo). Returns the folders' paths."""
    photos = [(name, _jpeg(rgb)) for name, rgb in sample_photos()]
    paths = []
    for group in range(folders):
        out = Path(folder) / f"sample-{group:05d}"
        out.mkdir(parents=True, exist_ok=True)
        for nth in range(files_per_folder):
            index = group * files_per_folder + nth
            name, jpeg = photos[index % len(photos)]
            (out / f"{index:06d}.jpg").write_bytes(jpeg)
            (out / f"{index:06d}.json").write_bytes(json.dumps({"source": name, "index": index}).encode())
        paths.append(str(out))
    return paths
