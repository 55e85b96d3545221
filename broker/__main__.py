"""`python -m broker` / `nats-broker`: start a node with nats-server's flags."""

from __future__ import annotations

import logging
import os
import sys

from broker.lazy import defer_unused_imports

# OpenSSL (ssl, hmac), idna, tempfile and shutil load on first use, not because trio imports them
defer_unused_imports()

import trio  # noqa: E402

from broker.config import ConfigError, parse_args, report_and_exit  # noqa: E402
from broker.logsetup import setup_logging  # noqa: E402
from broker.server import run_server  # noqa: E402


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
    except (OSError, BaseExceptionGroup) as e:
        failed = _first_oserror(e)
        if failed is None:
            raise
        # a port it cannot listen on: one fatal line and exit 1, as nats-server does
        logging.getLogger("broker").critical("%s", failed.strerror or failed)
        return 1
    return 0


def _first_oserror(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_oserror(inner)
            if found is not None:
                return found
    return None


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
