"""``realtime keys`` / ``python -m keys``: generate and list signing keys."""

from __future__ import annotations

import argparse
import os
import sys

from keys.errors import NoSigningKey
from keys.store import KeyStore, generate_key

DEFAULT_KEYS_DIR = "./keys.d"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``generate`` and ``list`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="keys_command", required=True)
    for name, help_text in (
        ("generate", "create a new ES256 signing key and print its kid"),
        ("list", "list keys: kid, created time, and which one signs"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--dir",
            default=os.environ.get("KEYS_DIR", DEFAULT_KEYS_DIR),
            help="key directory (env KEYS_DIR, default ./keys.d)",
        )


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``keys`` command; returns the exit status."""
    if args.keys_command == "generate":
        key = generate_key(args.dir)
        print(key.kid)
        return 0
    try:
        store = KeyStore.from_directory(args.dir)
    except NoSigningKey as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'KID':<44} {'CREATED (UTC)':<20} SIGNS")
    for index, key in enumerate(store.keys):
        created = key.created.strftime("%Y-%m-%d %H:%M:%S") if key.created else "-"
        print(f"{key.kid:<44} {created:<20} {'yes' if index == 0 else 'no'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m keys``."""
    parser = argparse.ArgumentParser(prog="python -m keys", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
