"""Process logging in nats-server's shape: its level labels (TRC DBG INF WRN ERR FTL), its
timestamp format and `[pid]` prefix, to stderr or the configured log file."""

from __future__ import annotations

import logging
import os
import time

from broker.config import Options

TRACE = 5  # below DEBUG: protocol traces (-V)


class _NatsFormatter(logging.Formatter):
    """nats-server's timestamp: local time with microseconds (2006/01/02 15:04:05.000000)."""

    def formatTime(self, record, datefmt=None):
        # datetime.fromtimestamp(t).strftime("%Y/%m/%d %H:%M:%S.%f") without importing datetime
        # (a node that only logs at startup would carry it for nothing)
        sec = int(record.created)
        us = round((record.created - sec) * 1e6)
        if us >= 1_000_000:
            sec, us = sec + 1, us - 1_000_000
        return f"{time.strftime('%Y/%m/%d %H:%M:%S', time.localtime(sec))}.{us:06d}"


def setup_logging(opts: Options) -> None:
    for lvl, name in ((TRACE, "TRC"), (logging.DEBUG, "DBG"), (logging.INFO, "INF"),
                      (logging.WARNING, "WRN"), (logging.ERROR, "ERR"), (logging.CRITICAL, "FTL")):
        logging.addLevelName(lvl, name)  # nats-server's level labels
    level = logging.INFO
    if opts.debug:
        level = logging.DEBUG
    if opts.trace:
        level = TRACE
    fmt = f"[{os.getpid()}] %(asctime)s [%(levelname).3s] %(message)s"
    handler: logging.Handler
    if opts.log_file:
        handler = logging.FileHandler(opts.log_file)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(_NatsFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
