"""``python -m localcloud [--host H] [--port P]``: the same as ``docflow local up``."""

from __future__ import annotations

import argparse
import sys

from localcloud.server import serve_forever


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m localcloud", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    args = parser.parse_args(argv)
    return serve_forever(host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
