"""JSON logs, one object per line, with the structured fields passed through `extra=`."""

from __future__ import annotations

import logging
import logging.config
import sys

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Renders a record and its `extra` fields as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(level))


class ClientErrorDemotion(logging.Filter):
    """aiohttp logs a malformed request (a client's fault) at ERROR; make it INFO.

    Otherwise anyone can trip error-log alerts at will with a bad header.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.getMessage().startswith(
            "Error handling request"
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def logging_config(level: str = "INFO") -> dict[str, object]:
    """A `logging.config.dictConfig` document with the JSON formatter on stderr.

    Faust's worker configures logging itself; handing it this document keeps its lines
    (and ours) JSON too. The Stripe SDK logs every request at INFO: thousands of lines a
    minute in a busy worker, so it speaks at WARNING unless the whole process runs at DEBUG.
    """
    third_party = "DEBUG" if level.upper() == "DEBUG" else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr}
        },
        "filters": {"client_errors": {"()": ClientErrorDemotion}},
        "loggers": {
            "aiohttp.server": {"filters": ["client_errors"]},
            "stripe": {"level": third_party},
        },
        "root": {"level": level.upper(), "handlers": ["json"]},
    }
