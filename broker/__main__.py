"""`python -m broker` / `nats-broker`: start a node with nats-server's flags."""

from __future__ import annotations

import logging
import os
import sys

from broker.lazy import lazy_module

# loaded on first use (TLS configured, a DTLS cookie), not because trio imports them: keeps
# OpenSSL (libssl, libcrypto) out of a server that never uses it
lazy_module("ssl")
lazy_module("hmac")
lazy_module("idna")

import trio  # noqa: E402

from broker.config import ConfigError, parse_args, report_and_exit  # noqa: E402
from broker.server import run_server, setup_logging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        report_and_exit(e)
    setup_logging(opts)
    try:
        trio.run(run_server, opts)
    except KeyboardInterrupt:
        pass
    except OSError as e:
        logging.getLogger("broker").error("Error listening: %s", e)
        return 1
    return 0


def _exit_now(code: int) -> None:
    """Leave the way nats-server does: the moment connections are closed and stores synced.
    Interpreter teardown adds tens of milliseconds during which the process still exists,
    which clients that reconnect elsewhere and harnesses waiting on the process observe."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
