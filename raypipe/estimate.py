"""``raypipe estimate INPUT``: the size of a job and its bill before it runs.

1. Every shard's tar headers are read, not its payloads (a few hundred bytes per member): shards,
   samples, image members and bytes are exact. A Parquet table's footer is read instead: its rows, and
   the non-null values of its member columns from the footer's statistics (exact where the writer
   stored null counts, an upper bound where it did not).
2. Faces are counted on a random sample of the images (read by offset from their shards, decoded and
   run through the job's face analyzer), and scaled to all images with a 95 % interval.
3. Seconds per face come from ``raypipe/cost_table.json``, which ``benchmarks/cost_table.py`` builds
   from the benchmark results. Each row says whether it was measured or assumed, on which device and
   when. GPU-hours are faces times seconds per face; the price, if given, is GPU-hours times it.

Nothing is written anywhere. The face count is a sample estimate; the seconds per face are only as good
as the row they come from, and the report says which rows no GPU has measured.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from raypipe.config import JobConfig
from raypipe.images import decode_image, image_format_for
from raypipe.io.concurrent import map_bounded
from raypipe.io.filetrees import folder_uri, group_files, is_files_group, samples_of
from raypipe.io.retry import retry
from raypipe.io.storage import StorageOptions, filesystem, join, redact
from raypipe.io.tables import is_table_shard
from raypipe.io.tars import MemberHeader, iter_headers, split_member_name
from raypipe.logs import get_logger

log = get_logger(__name__)

HEADER_BLOCK = 64 * 1024  # read-ahead while walking headers: small, so payloads are skipped, not fetched
Z95 = 1.96


@dataclass(frozen=True)
class TableCell:
    """The ``nth`` non-null value of member column ``column`` in row group ``group`` of a table."""

    group: int
    column: str
    struct: bool
    nth: int


@dataclass
class ShardIndex:
    uri: str
    samples: int
    bytes: int  # of the members' data (a table: the file's size)
    images: list[MemberHeader] | list[TableCell]
    exact: bool = True  # False: a table without null counts, whose images are counted as rows


@dataclass
class Estimate:
    input: list[str]
    shards: int
    samples: int
    images: int
    bytes: int
    exact: bool = True
    sampled: int = 0
    faces_sampled: int = 0
    unreadable: int = 0  # sampled images that did not decode (the job would fail or quarantine them)
    analyzer: str = ""
    faces_per_image: float = 0.0
    faces: float = 0.0
    faces_low: float = 0.0
    faces_high: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # the cost table's rows, priced
    price_per_gpu_hour: float | None = None

    def render(self) -> str:
        lines = [
            f"raypipe estimate: {', '.join(self.input)}",
            f"  input:  {self.shards:,} shard(s), {self.samples:,} samples, {self.images:,} images, "
            f"{self.bytes / 1e9:.2f} GB ("
            + ("exact" if self.exact else "images at most, as some tables have no null counts")
            + ": from tar headers, Parquet footers and folder listings; no payload was read)",
        ]
        if self.sampled:
            lines.append(
                f"  faces:  about {self.faces:,.0f} (95 % interval {self.faces_low:,.0f}-{self.faces_high:,.0f}): "
                f"{self.faces_sampled} face(s) in {self.sampled} randomly sampled image(s), {self.analyzer} analyzer"
                + (f"; {self.unreadable} sampled image(s) did not decode" if self.unreadable else "")
            )
        else:
            lines.append("  faces:  no image to sample")
        lines.append("  cost:   seconds per face (or image) from raypipe/cost_table.json; hours for all of them")
        for row in self.rows:
            lines.append("    " + _row_line(row, self.price_per_gpu_hour))
        if any(row["kind"] == "assumed" for row in self.rows):
            lines.append("  'assumed' rows are FLOP counts at an assumed GPU efficiency, not a measurement on that GPU")
        return "\n".join(lines)


def _row_line(row: dict[str, Any], price: float | None) -> str:
    low, high = row["hours"]
    hours = f"{low:,.2f}" if math.isclose(low, high) else f"{low:,.2f}-{high:,.2f}"
    unit = "CPU-hours" if row["method"] != "reverse_personalization" else "GPU-hours"
    text = f"{row['profile']:<11} {row['device']:<14} {hours} {unit}"
    if price is not None and unit == "GPU-hours":
        text += f" (${low * price:,.0f}" + ("" if math.isclose(low, high) else f"-${high * price:,.0f}") + ")"
    return f"{text}  [{row['kind']}, {row['date'] or 'undated'}: {row['basis']}]"


def index_shard(uri: str, options: StorageOptions) -> ShardIndex:
    """Samples, bytes and image members of one shard, from its headers (a table: its footer)."""
    if is_table_shard(uri):
        return index_table(uri, options)
    if is_files_group(uri):
        files = group_files(uri, options)
        images = [MemberHeader(f.name, 0, f.size) for f in files if image_format_for(f.name) is not None]
        return ShardIndex(uri, len(samples_of(f.name for f in files)), sum(f.size for f in files), images)
    fs, path = filesystem(uri, options)

    def walk() -> ShardIndex:
        with fs.open(path, "rb", block_size=HEADER_BLOCK) as handle:
            members = list(iter_headers(handle, redact(uri)))
        keys = {split_member_name(m.name)[0] for m in members}
        images = [m for m in members if image_format_for(m.name) is not None]
        return ShardIndex(uri, len(keys), sum(m.size for m in members), images)

    return retry(walk, description=f"read the headers of {redact(uri)}")


def index_table(uri: str, options: StorageOptions) -> ShardIndex:
    """Rows and the values of member columns of one Parquet table, from its footer alone. A table the
    job would refuse to scan counts its rows and no images (none of them would be anonymized)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypipe.imagefiles import picture_in_text
    from raypipe.io.tables import scan_plan

    fs, path = filesystem(uri, options)

    def walk() -> ShardIndex:
        with fs.open(path, "rb") as handle:
            size = fs.size(path)
            try:
                table = pq.ParquetFile(handle)
            except (pa.ArrowException, ValueError) as exc:
                log.warning("%s: not a readable Parquet table (%s); the job would fail it", redact(uri), exc)
                return ShardIndex(uri, 0, size, [])
            meta = table.metadata
            columns, hidden = scan_plan(table.schema_arrow, picture_in_text)
            if hidden:
                log.warning("%s: %s; none of its rows would be released", redact(uri), hidden)
                return ShardIndex(uri, meta.num_rows, size, [])
            where = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
            cells: list[TableCell] = []
            exact = True
            for group in range(meta.num_row_groups):
                row_group = meta.row_group(group)
                for column in columns:
                    leaf = where.get(f"{column.name}.bytes" if column.struct else column.name)
                    stats = row_group.column(leaf).statistics if leaf is not None else None
                    if stats is not None and stats.has_null_count:
                        count = row_group.num_rows - stats.null_count
                    else:
                        count, exact = row_group.num_rows, False
                    cells += [TableCell(group, column.name, column.struct, nth) for nth in range(count)]
            return ShardIndex(uri, meta.num_rows, size, cells, exact)

    return retry(walk, description=f"read the footer of {redact(uri)}")


def estimate(config: JobConfig, sample: int = 32, seed: int = 0, price_per_gpu_hour: float | None = None) -> Estimate:
    """Index every input shard, count faces on ``sample`` random images, price every cost-table row."""
    from raypipe.anonymize.pipeline import load_analyzer_from_config

    uris = config.input_shards()
    shards = map_bounded(lambda uri: index_shard(uri, config.storage), uris)
    result = Estimate(
        input=[redact(spec) for spec in config.input],
        shards=len(shards),
        samples=sum(s.samples for s in shards),
        images=sum(len(s.images) for s in shards),
        bytes=sum(s.bytes for s in shards),
        exact=all(s.exact for s in shards),
        price_per_gpu_hour=price_per_gpu_hour,
    )
    population = [(s.uri, image) for s in shards for image in s.images]
    chosen = random.Random(seed).sample(population, min(sample, len(population)))
    if chosen:
        analyzer = load_analyzer_from_config(config.models)
        counts = []
        for uri, header in chosen:
            faces = _faces_in(uri, header, analyzer, config)
            if faces is None:
                result.unreadable += 1
            else:
                counts.append(faces)
        result.analyzer, result.sampled = analyzer.name, len(counts)
        _scale(result, counts)
    result.rows = priced_rows(result, config)
    return result


def _faces_in(uri: str, header: MemberHeader | TableCell, analyzer: Any, config: JobConfig) -> int | None:
    if is_files_group(uri) and isinstance(header, MemberHeader):  # a file of a group: offset 0, read whole
        uri = join(folder_uri(uri), header.name)
    fs, path = filesystem(uri, config.storage)

    def read() -> bytes | None:
        with fs.open(path, "rb") as handle:
            if isinstance(header, TableCell):
                return _cell(handle, header)
            handle.seek(header.offset)
            return bytes(handle.read(header.size))

    name = f"row group {header.group} of {header.column}" if isinstance(header, TableCell) else header.name
    data = retry(read, description=f"read {name} of {redact(uri)}")
    if data is None:
        return None
    try:
        rgb = decode_image(data, max_pixels=config.limits.max_image_pixels).rgb
    except Exception as exc:  # the job would fail or quarantine this image; it holds no countable face
        log.info("%s in %s: not decoded (%s)", name, redact(uri), exc)
        return None
    return len(analyzer.analyze(rgb))


def _cell(handle: Any, cell: TableCell) -> bytes | None:
    """The bytes of one table cell: its row group's column is read (nothing else of the table); None
    when that row group cannot be read (the job fails its rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        values = pq.ParquetFile(handle).read_row_group(cell.group, columns=[cell.column]).column(0)
    except (pa.ArrowException, ValueError, OSError):  # a damaged row group (pyarrow says OSError)
        return None
    if cell.struct:
        values = pc.struct_field(values, "bytes")
    present = [value for value in values.to_pylist() if value is not None]
    return bytes(present[cell.nth]) if cell.nth < len(present) else None


def _scale(result: Estimate, counts: list[int]) -> None:
    """Faces in all images from faces per sampled image: mean, and a normal 95 % interval (with the
    finite-population correction; never below the faces actually seen)."""
    n = len(counts)
    if n == 0:
        return
    mean = sum(counts) / n
    spread = math.sqrt(sum((c - mean) ** 2 for c in counts) / (n - 1)) if n > 1 else 0.0
    correction = math.sqrt(max(0.0, (result.images - n) / (result.images - 1))) if result.images > 1 else 0.0
    half = Z95 * spread / math.sqrt(n) * correction * result.images
    result.faces_sampled, result.faces_per_image = sum(counts), mean
    result.faces = mean * result.images
    result.faces_low = max(float(sum(counts)), result.faces - half)
    result.faces_high = result.faces + half


def cost_table() -> list[dict[str, Any]]:
    return list(json.loads(resources.files("raypipe").joinpath("cost_table.json").read_text())["rows"])


def priced_rows(result: Estimate, config: JobConfig) -> list[dict[str, Any]]:
    """Each cost-table row with the hours this input would take: the job's own method first (for
    Reverse Personalization, every profile; the job's own settings are marked)."""
    rows = []
    for row in cost_table():
        if row["method"] == "reverse_personalization":
            seconds = row["seconds_per_face"]
            hours = (result.faces * seconds[0] / 3600, result.faces * seconds[1] / 3600)
            mine = (row["face_size"], row["num_steps"]) == (config.method.face_size, config.method.num_steps)
        else:
            per_image = row["seconds_per_image"] * result.images / 3600
            hours, mine = (per_image, per_image), row["method"] == config.method.name
        rows.append({**row, "hours": hours, "profile": row["profile"] + ("*" if mine else "")})
    ours = config.method.name
    return sorted(rows, key=lambda r: (r["method"] != ours, r["method"] != "reverse_personalization"))
