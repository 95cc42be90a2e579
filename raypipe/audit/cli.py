"""``raypipe audit verify``, ``report`` and ``query``: argument parsing and exit codes.

Exit codes: 0 verified (or report written, or query answered), 1 problems found, 2 usage or
configuration error (no key, unreadable key, a query DuckDB refuses).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raypipe.audit.signing import KEY_ENV, AuditKeyError, load_key
from raypipe.logs import get_logger

log = get_logger(__name__)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
DEFAULT_REPORT = "raypipe-audit-report.html"


def add_audit_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``audit verify`` and ``audit report`` on the main parser's subparsers.

    Each sub-command sets ``func`` to its handler, which takes the parsed arguments and returns the
    exit code.
    """
    audit = subparsers.add_parser("audit", help="verify or report on the audit evidence of a run")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    verify = commands.add_parser(
        "verify",
        help="recompute hashes, Merkle root, chain and signature; print OK or every problem",
        description=f"The key comes from --key-file or the environment variable {KEY_ENV}.",
    )
    verify.add_argument("output", metavar="OUTPUT", help="output folder or URI of the run")
    verify.add_argument("--key-file", help="HMAC secret, or Ed25519 PEM key (the public key is enough to verify)")
    verify.add_argument(
        "--anchor",
        metavar="CHECKPOINT",
        help="a checkpoint file, or the audit.anchor folder (its newest checkpoint of OUTPUT): also detect "
        "rollback, truncation and changed inputs",
    )
    verify.set_defaults(func=cmd_audit_verify)

    report = commands.add_parser(
        "report",
        help="write one self-contained HTML report: a fresh verification first, then counts, plots, reasons",
        description=f"With a key (--key-file or {KEY_ENV}) the report opens with a fresh verification; "
        "without one it says it was not verified.",
    )
    report.add_argument("output", metavar="OUTPUT", help="output folder or URI of the run")
    report.add_argument(
        "--out", default=DEFAULT_REPORT, help=f"HTML file or folder to write (default {DEFAULT_REPORT})"
    )
    report.add_argument("--key-file", help="the audit key, to verify OUTPUT before reporting on it")
    report.add_argument("--anchor", metavar="CHECKPOINT", help="as for verify: also detect rollback")
    report.add_argument(
        "--gallery",
        type=int,
        default=0,
        metavar="N",
        help="show up to N anonymized faces cropped from released outputs (off by default; outputs are "
        "still personal-looking data: share the report accordingly)",
    )
    report.set_defaults(func=cmd_audit_report)

    query = commands.add_parser(
        "query",
        help="SQL over the audit records (DuckDB): tables 'audit' (one row per sample) and 'faces'",
        description="Examples (raypipe audit query --examples lists them): "
        'raypipe audit query OUTPUT "SELECT status, count(*) FROM audit GROUP BY status"',
    )
    query.add_argument("output", metavar="OUTPUT", nargs="?", help="output folder or URI of the run")
    query.add_argument("sql", metavar="SQL", nargs="?", help="the query, over the tables audit and faces")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table", help="how to print rows")
    query.add_argument("--examples", action="store_true", help="print the documented example queries")
    query.set_defaults(func=cmd_audit_query)
    return audit


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify OUTPUT; prints ``OK ...`` (exit 0) or each problem (exit 1); exit 2 without a usable key."""
    from raypipe.audit.verify import verify_output

    try:
        key = load_key(args.key_file)
    except AuditKeyError as exc:
        print(f"raypipe audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = verify_output(args.output, key, anchor=args.anchor)
    print(report.render())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_audit_report(args: argparse.Namespace) -> int:
    """Write the HTML report of OUTPUT and print its path (verified first when a key is at hand)."""
    import os

    from raypipe.audit.report import render_report

    key = None
    if args.key_file is not None or os.environ.get(KEY_ENV):
        try:
            key = load_key(args.key_file)
        except AuditKeyError as exc:
            print(f"raypipe audit report: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.gallery < 0:
        print(f"raypipe audit report: --gallery must be >= 0, got {args.gallery}", file=sys.stderr)
        return EXIT_USAGE
    path = render_report(args.output, args.out, key=key, anchor=args.anchor, gallery=args.gallery)
    print(path)
    return EXIT_OK


def cmd_audit_query(args: argparse.Namespace) -> int:
    """Print the rows of an SQL query over OUTPUT's audit records (or the example queries)."""
    import duckdb

    from raypipe.audit.query import EXAMPLES, query, render

    if args.examples:
        for what, sql in EXAMPLES.items():
            print(f'# {what}\nraypipe audit query OUTPUT "{sql}"\n')
        return EXIT_OK
    if not args.output or not args.sql:
        print("raypipe audit query: give OUTPUT and SQL (or --examples)", file=sys.stderr)
        return EXIT_USAGE
    try:
        table = query(args.output, args.sql)
    except duckdb.Error as exc:
        print(f"raypipe audit query: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
    elif args.format == "json":
        import json

        for row in table.to_pylist():
            print(json.dumps(row, default=str))
    else:
        print(render(table))
    return EXIT_OK
