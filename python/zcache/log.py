"""Logging setup: one place that turns ZERO_LOG_LEVEL / ZERO_LOG_FORMAT into handlers.

Loggers are named after the component (`zcache.replicator`, `zcache.server`, ...). Context that
belongs to every line of a component (client group, connection) is bound with
`logging.LoggerAdapter` by the component itself; this module only decides the output format.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# zero-cache's levels; "trace" does not exist in the standard library, so it maps to DEBUG.
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Installs the root handler for the `zcache` logger tree (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger("zcache")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    root.propagate = False
