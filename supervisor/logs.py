"""structlog setup: journald priority prefixes under systemd, readable console, or JSON lines."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# syslog priorities journald reads from a leading "<N>" (sd-daemon(3)).
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
_SECRET_KEYS = frozenset({"password", "secret", "http_secret", "key_pem", "hash", "token"})


def stream_is_journal(stream: TextIO) -> bool:
    """True when systemd connected this stream to the journal ($JOURNAL_STREAM is "dev:ino")."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in _SECRET_KEYS.intersection(event):
        event[key] = "********"
    return event


def _journal_renderer(_: WrappedLogger, method: str, event: EventDict) -> str:
    level = event.pop("level", method)
    text = str(event.pop("event", ""))
    trace = str(event.pop("exception", ""))
    fields = " ".join(f"{k}={_quote(v)}" for k, v in event.items())
    line = f"{text} {fields}".rstrip() if fields else text
    if trace:
        line += "\n" + trace.rstrip("\n")
    # journald reads the prefix line by line: every line of a multi-line event keeps the priority.
    prefix = f"<{PRIORITY.get(level, 6)}>"
    return "\n".join(prefix + part for part in line.split("\n"))


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> str:
    """Configure structlog; returns the format chosen ("journal", "console" or "json")."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "journal" if stream_is_journal(out) else "console"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _redact,
    ]
    renderer: Processor
    if fmt == "journal":
        shared.append(structlog.processors.format_exc_info)
        renderer = _journal_renderer
    elif fmt == "json":
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        shared.append(structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return fmt
