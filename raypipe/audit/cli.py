"""``raypipe audit verify`` and ``raypipe audit report``: argument parsing and exit codes.

Exit codes: 0 verified (or report written), 1 problems found, 2 usage or configuration error (no key,
unreadable key).
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

    report = commands.add_parser("report", help="write an HTML report with plots (counts, similarities, ...)")
    report.add_argument("output", metavar="OUTPUT", help="output folder or URI of the run")
    report.add_argument(
        "--out", default=DEFAULT_REPORT, help=f"HTML file or folder to write (default {DEFAULT_REPORT})"
    )
    report.set_defaults(func=cmd_audit_report)
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
    """Write the HTML report of OUTPUT and print its path."""
    from raypipe.audit.report import render_report

    path = render_report(args.output, args.out)
    print(path)
    return EXIT_OK
