"""``python -m chatserv.admin``: manage the IP ban list of a running daemon.

It edits the daemon's ``--ban-file`` (atomically, keeping comments); the daemon applies the
change within ``--ban-file-interval`` seconds and keeps it in its store. Nothing needs a
restart, and nothing writes the database behind the daemon's back.
"""

from __future__ import annotations

import argparse
import sys

from chatserv.bans import edit_ban_file, normalise, parse_addresses

OUTCOMES = {
    ("ban", True): "banned {}",
    ("ban", False): "{} was banned already",
    ("unban", True): "unbanned {}",
    ("unban", False): "{} was not banned",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatserv.admin", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["ban", "unban", "list"])
    parser.add_argument("addresses", nargs="*", metavar="ADDRESS", help="IPv4 or IPv6 address")
    parser.add_argument("--ban-file", required=True, help="the --ban-file the daemon runs with")
    args = parser.parse_args(argv)
    if (args.command == "list") == bool(args.addresses):
        parser.error("ban and unban need addresses; list takes none")
    for address in args.addresses:
        try:
            normalise(address)
        except ValueError:
            parser.error(f"not an IP address: {address!r}")
    try:
        if args.command == "list":
            with open(args.ban_file, encoding="utf-8") as source:
                print("\n".join(sorted(parse_addresses(source.read())[0])))
            return 0
        for address in args.addresses:
            changed = edit_ban_file(args.ban_file, address, args.command == "ban")
            print(OUTCOMES[args.command, changed].format(normalise(address)))
    except FileNotFoundError:
        parser.error(f"no ban file {args.ban_file}: start the daemon with --ban-file first "
                     "(it writes the stored bans there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
