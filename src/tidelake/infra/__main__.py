"""``python -m tidelake.infra up|down|status|prewarm [service ...]`` (prints JSON on stdout)."""

from __future__ import annotations

import argparse
import json
import sys

from tidelake.errors import InfraError
from tidelake.infra import SERVICES, down, ensure_cached, status, up


def main(argv: list[str] | None = None) -> int:
    """Run one infra command; exit status 1 with the message on stderr on InfraError."""
    parser = argparse.ArgumentParser(prog="python -m tidelake.infra")
    parser.add_argument("command", choices=["up", "down", "status", "prewarm"])
    parser.add_argument("services", nargs="*", help=f"any of {', '.join(SERVICES)}")
    args = parser.parse_args(argv)
    chosen = args.services or None
    try:
        if args.command == "up":
            result: object = up(chosen or ["kafka", "postgres"])
        elif args.command == "down":
            result = down(chosen)
        elif args.command == "prewarm":
            ensure_cached(chosen)
            result = "cached"
        else:
            result = status()
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
