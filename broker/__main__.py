"""`python -m broker` / `nats-broker`: start a node with nats-server's flags."""

from __future__ import annotations

import logging
import sys

import trio

from broker.config import ConfigError, parse_args, report_and_exit
from broker.server import run_server, setup_logging


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        report_and_exit(e)
    setup_logging(opts)
    logging.getLogger("broker").info("Starting nats-server (python broker)")
    try:
        trio.run(run_server, opts)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        logging.getLogger("broker").error("Error listening: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
