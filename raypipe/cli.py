"""The ``raypipe`` command: a thin translation from arguments to library calls.

This is the only place that turns exceptions into exit codes:
0 success, 1 some samples failed or were quarantined, 2 bad usage or configuration, 3 runtime error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raypipe.config import ANALYZERS, METHOD_NAMES, PRESETS, ConfigError
from raypipe.io.shards import ShardSpecError
from raypipe.io.storage import CredentialsInURIError, UnsupportedURIError
from raypipe.logs import configure_logging, get_logger, quiet_libraries

log = get_logger(__name__)

EXIT_OK, EXIT_SAMPLES, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """The method flags shared by ``anonymize-image`` and ``anonymize``; they override the config file."""
    g = parser.add_argument_group("method (override the config file)")
    g.add_argument("--config", help="job YAML file (sections: models, method, ...)")
    g.add_argument(
        "--method",
        choices=METHOD_NAMES,
        help="reverse_personalization (default; GPU), or a classic CPU-only method: blur, pixelate, mask",
    )
    g.add_argument("--preset", choices=PRESETS, help="sdxl: real weights; tiny: random test models (default sdxl)")
    g.add_argument("--analyzer", choices=ANALYZERS, help="face detector/recognizer (default insightface)")
    g.add_argument("--guidance-scale", type=float, help="w; negative repels the identity (default -10)")
    g.add_argument("--attribute", help='attribute prompt steering age/sex/race, e.g. "an elderly man"')
    g.add_argument("--steps", type=int, help="number of diffusion steps N (default 100)")
    g.add_argument("--skip", type=float, help="fraction of the schedule skipped, in [0, 1) (default 0.7)")
    g.add_argument("--face-size", type=int, help="aligned crop side in pixels (default 1024; tiny: 128)")
    g.add_argument("--seed", type=int, help="run seed; each face is seeded from (seed, key, face index)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default auto)")


def method_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Flags given on the command line, as config sections (``None`` means: not given)."""
    models = {"preset": args.preset, "analyzer": args.analyzer, "device": args.device}
    method = {
        "name": args.method,
        "guidance_scale": args.guidance_scale,
        "attribute_prompt": args.attribute,
        "num_steps": args.steps,
        "skip": args.skip,
        "face_size": args.face_size,
        "seed": args.seed,
    }
    return {
        "models": {k: v for k, v in models.items() if v is not None},
        "method": {k: v for k, v in method.items() if v is not None},
    }


def cmd_anonymize_image(args: argparse.Namespace) -> int:
    from fsspec.implementations.local import LocalFileSystem

    from raypipe.anonymize.pipeline import ClassicAnonymizer, ReversePersonalization, load_analyzer_from_config
    from raypipe.config import load_config
    from raypipe.images import decode_image, encode_image, image_format_for
    from raypipe.io.publish import publish_bytes

    config = load_config(args.config, overrides=method_overrides(args), require_io=False)
    out_format = image_format_for(args.output)
    if out_format is None:
        raise ConfigError(f"OUT: cannot tell the image format from {args.output!r}; use .jpg, .png or .webp")
    data = Path(args.input).read_bytes()
    decoded = decode_image(data, max_pixels=config.limits.max_image_pixels)
    anonymizer: ClassicAnonymizer | ReversePersonalization
    if config.method.classic:
        anonymizer = ClassicAnonymizer(load_analyzer_from_config(config.models), config.method, config.audit)
    else:
        anonymizer = ReversePersonalization.from_pretrained(config.models, config.method, audit=config.audit)
    result = anonymizer.anonymize(decoded.rgb, key=Path(args.input).stem)
    for face in result.faces:
        print(face_verdict(face))
    encoded = None
    if result.image is not None:
        encoded = encode_image(result.image, out_format, source=data, jpeg_quality=config.encode.jpeg_quality)
    if encoded is not None:  # the image first: a record never names an output that was not written
        publish_bytes(LocalFileSystem(), str(Path(args.output).resolve()), encoded)
    if args.record:
        record = image_record(args.input, data, result, anonymizer) | {
            "output": args.output if encoded is not None else None,
            "output_sha256": hashlib.sha256(encoded).hexdigest() if encoded is not None else None,
        }
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        publish_bytes(LocalFileSystem(), str(Path(args.record).resolve()), text.encode())
    if encoded is None:
        log.error("%s: %s, nothing written: %s", args.input, result.status.value, result.error)
        return EXIT_SAMPLES
    log.info("%s -> %s: %s, %d face(s)", args.input, args.output, result.status.value, len(result.faces))
    return EXIT_OK


def face_verdict(face: Any) -> str:
    """One line per face: where, what happened, and the gate's score against its threshold."""
    box = [round(v) for v in face.box]
    line = f"face {face.index} at {box}: {face.status.value}"
    if face.distance is not None and face.threshold is not None:
        relation = ">=" if face.distance >= face.threshold else "<"
        line += f" (distance {face.distance:.3f} {relation} {face.threshold:.2f})"
    if face.attempts and face.attempts > 1:
        line += f", {face.attempts} attempts, guidance {face.guidance_scale:g}"
    return line + (f": {face.error}" if face.error else "")


def image_record(path: str, data: bytes, result: Any, anonymizer: Any) -> dict[str, Any]:
    """The record of one ``anonymize-image`` run, with the face fields of the job's audit records."""
    import raypipe

    described = anonymizer.describe()
    return {
        "input": path,
        "input_sha256": hashlib.sha256(data).hexdigest(),
        "status": result.status.value,
        "error": result.error,
        "error_step": result.step,
        "faces_count": len(result.faces),
        "faces": [face.to_dict() for face in result.faces],
        "missed_faces": result.missed_faces,
        "recognizer": anonymizer.gate.recognizer_name,
        "method": described["method"],
        "models": described["models"],
        "optimizations": described["optimizations"],
        "analyzer": described["analyzer"],
        "weight_hashes": described["weight_hashes"],
        "code_version": raypipe.__version__,
    }


INPUT_HELP = (
    "shards (path, s3://, gs://, glob, data-{00000..00099}.tar), Parquet tables (*.parquet), or a folder of image files"
)


def add_input_format_flag(p: argparse.ArgumentParser) -> None:
    from raypipe.io.shards import INPUT_FORMATS

    p.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        help="what INPUT holds: WebDataset tars, Parquet tables, files (a tree of image files), or auto (by suffix;"
        " tars first; a folder with neither is read as files; the default)",
    )


def anonymize_config(args: argparse.Namespace) -> Any:
    """The job configuration of an ``anonymize`` command line: the config file, then the flags."""
    from raypipe.config import load_config

    overrides: dict[str, object] = dict(method_overrides(args))
    overrides["input"] = args.input
    overrides["output"] = args.output
    overrides["input_format"] = args.input_format
    if args.attribute_from:
        overrides["method"] = {**overrides["method"], "attribute_from": args.attribute_from}  # type: ignore[dict-item]
    if args.ray_address:
        overrides["pipeline"] = {"address": args.ray_address}
    if args.no_progress:
        overrides["pipeline"] = {**overrides.get("pipeline", {}), "progress": False}  # type: ignore[dict-item]
    if getattr(args, "verbose", False):
        overrides["pipeline"] = {**overrides.get("pipeline", {}), "library_logs": True}  # type: ignore[dict-item]
    if args.key_file:
        overrides["audit"] = {"key_file": args.key_file}
    return load_config(args.config, overrides=overrides)


def cmd_estimate(args: argparse.Namespace) -> int:
    from raypipe.config import load_config
    from raypipe.estimate import estimate

    if args.sample < 0:
        raise ConfigError(f"--sample: must be an integer >= 0, got {args.sample}")
    overrides: dict[str, object] = dict(method_overrides(args))
    overrides["input"] = args.input
    overrides["input_format"] = args.input_format
    config = load_config(args.config, overrides=overrides, require_io=False)
    print(
        estimate(config, sample=args.sample, seed=args.sample_seed, price_per_gpu_hour=args.price_per_gpu_hour).render()
    )
    return EXIT_OK


def check_submittable(job: Sequence[str]) -> None:
    """Refuse here, before anything is uploaded, a job the cluster would refuse: flags that do not parse,
    a configuration that does not validate, and INPUT or OUTPUT given as a relative path (on the cluster
    it would name a folder inside the job's own working directory, which is deleted with the job)."""
    args = list(job[1:] if job and job[0] == "--" else job)
    if not args or args[0] != "anonymize":
        return  # build_submission names what can be submitted
    parser = build_parser()
    try:
        parsed = parser.parse_args(args)
    except SystemExit:  # argparse has printed what is wrong
        raise ConfigError(f"the job's command line does not parse: {shlex.join(args)}") from None
    config = anonymize_config(parsed)
    for what, location in [*(("input", uri) for uri in config.input), ("output", config.output)]:
        if "://" not in location and not Path(location).expanduser().is_absolute():
            raise ConfigError(
                f"{what}: {location!r} is a relative path; on the cluster it would name a folder inside the "
                "job's working directory. Give a URI (s3://, gs://) or an absolute path every node shares"
            )


def cmd_anonymize(args: argparse.Namespace) -> int:
    from raypipe.pipeline.run import run

    config = anonymize_config(args)
    if not config.pipeline.library_logs:
        quiet_libraries()
    if args.dry_run:
        from raypipe.pipeline.dryrun import dry_run

        planned = dry_run(config, overwrite=args.overwrite)
        print(planned.render())
        return EXIT_USAGE if planned.refusal else EXIT_OK
    summary = run(config, overwrite=args.overwrite)
    print_summary(summary)
    return EXIT_OK if summary.ok else EXIT_SAMPLES


def print_summary(summary: object) -> None:
    from raypipe.pipeline.run import RunSummary

    assert isinstance(summary, RunSummary)
    lines = [
        f"raypipe run {summary.run_id} -> {summary.output}",
        f"  shards:  {summary.shards_done}/{summary.shards_total} complete"
        f" ({summary.shards_skipped} were already done)",
        f"  samples: {summary.samples_total} accounted for, {summary.samples_processed} processed now",
    ]
    for status, count in summary.counts.items():
        lines.append(f"    {status:<12} {count}")
    if summary.faces:
        faces = ", ".join(f"{status} {count}" for status, count in summary.faces.items())
        lines.append(f"  faces in the shards of this run: {faces} ({summary.faces_retried} retried)")
    if summary.incomplete_shards:
        lines.append(
            f"  incomplete shards: {', '.join(summary.incomplete_shards[:10])}"
            + (" ..." if len(summary.incomplete_shards) > 10 else "")
        )
        lines.append("  rerun the same command to finish them")
    check = f"raypipe audit verify {shlex.quote(summary.output)}"  # a command to paste: quoted for the shell
    check += f" --anchor {shlex.quote(summary.anchor)}" if summary.anchor else ""
    if summary.manifest is not None:
        lines.append(f"  audit:   signed manifest #{summary.manifest}; check it with: {check}")
        lines.append(f"  anchor:  {summary.anchor or 'none (set audit.anchor to make rollbacks detectable)'}")
    elif summary.covered_by is not None:
        lines.append(f"  audit:   nothing new; signed manifest #{summary.covered_by} still covers it ({check})")
    else:
        lines.append("  audit:   no signing key, no manifest (set RAYPIPE_AUDIT_KEY or --key-file)")
    lines.append(f"  time:    {summary.elapsed_s:.1f}s")
    print("\n".join(lines))


def cmd_status(args: argparse.Namespace) -> int:
    from raypipe.status import output_status

    report = output_status(args.output)
    print(report.render())
    return EXIT_OK


def cmd_make_samples(args: argparse.Namespace) -> int:
    from raypipe.samples import make_sample_files, make_sample_shards, make_sample_tables

    if args.format == "parquet":
        paths = make_sample_tables(args.folder, tables=args.shards, rows_per_table=args.per_shard)
    elif args.format == "files":
        paths = make_sample_files(args.folder, folders=args.shards, files_per_folder=args.per_shard)
    else:
        paths = make_sample_shards(args.folder, shards=args.shards, samples_per_shard=args.per_shard)
    for path in paths:
        print(path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raypipe", description="Anonymize the faces of image datasets with Reverse Personalization on Ray."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the libraries' own log lines")
    parser.add_argument("--version", action="version", version=f"raypipe {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("anonymize-image", help="anonymize every face in one image, without Ray")
    p.add_argument("input", metavar="IN", help="input image file")
    p.add_argument("output", metavar="OUT", help="output image file (format from its extension)")
    p.add_argument(
        "--record",
        metavar="FILE.json",
        help="write the image's record (status, and per face the fields of the job's audit) to this file",
    )
    add_method_flags(p)
    p.set_defaults(func=cmd_anonymize_image)

    p = sub.add_parser("estimate", help="shards, samples, faces and GPU-hours of INPUT, before any run")
    p.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    add_input_format_flag(p)
    p.add_argument("--sample", type=int, default=32, help="images to count faces on, at random (default 32)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the random sample (default 0)")
    p.add_argument("--price-per-gpu-hour", type=float, help="price one GPU-hour to show a cost")
    add_method_flags(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "anonymize", help="anonymize a dataset with Ray: INPUT shards, tables or image files -> OUTPUT folder/bucket"
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        nargs="?",
        help=INPUT_HELP,
    )
    p.add_argument("output", metavar="OUTPUT", nargs="?", help="output folder or bucket prefix")
    add_input_format_flag(p)
    add_method_flags(p)
    p.add_argument(
        "--attribute-from",
        metavar="MEMBER:FIELD",
        help="each sample's attribute prompt from its metadata, e.g. json:prompt, or a table's column:NAME"
        " (--attribute is the default)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete results of a different configuration in OUTPUT")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--key-file", help="audit signing key file (default: the RAYPIPE_AUDIT_KEY variable)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (shards to do and skip, lease, stages, models); write nothing",
    )
    p.set_defaults(func=cmd_anonymize)

    p = sub.add_parser("status", help="shards done/pending and samples per status of a run's OUTPUT")
    p.add_argument("output", metavar="OUTPUT")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("make-samples", help="write small shards, tables or a tree of files of public-domain photos")
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("--shards", type=int, default=3, help="shards (tables, or folders of files)")
    p.add_argument("--per-shard", type=int, default=5, help="samples per shard (rows per table, photos per folder)")
    p.add_argument(
        "--format",
        choices=("webdataset", "parquet", "files"),
        default="webdataset",
        help="tars, Parquet tables, or a tree of image files",
    )
    p.set_defaults(func=cmd_make_samples)

    from raypipe.audit.cli import add_audit_commands
    from raypipe.staging import add_models_commands
    from raypipe.submit import add_submit_commands

    add_audit_commands(sub)
    add_submit_commands(sub)
    add_models_commands(sub)
    return parser


def _version() -> str:
    import raypipe

    return raypipe.__version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not args.verbose and args.command != "anonymize":  # anonymize: its pipeline.library_logs decides
        quiet_libraries()
    try:
        if args.command == "submit":
            check_submittable(args.job)
        return int(args.func(args))
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_USAGE
    except (ShardSpecError, UnsupportedURIError, CredentialsInURIError) as exc:  # a bad INPUT or OUTPUT
        log.error("%s", exc)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        log.error("not found: %s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # the CLI is the one place that turns any failure into an exit code
        log.error("%s: %s", type(exc).__name__, exc, exc_info=args.verbose)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
