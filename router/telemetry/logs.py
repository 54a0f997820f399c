"""Structured logs: one JSON object per line, and one access line per request.

Every log record becomes ``{"ts", "level", "logger", "msg", ...fields}``; structured fields travel in
``extra={"fields": {...}}``. The access line (logger ``noor.access``) carries who asked for what, where
it ran, how it ended, its tokens and its latencies — never the prompt or the completion, unless the
tenant is under content debugging (settings.telemetry.capture_content_tenants).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import orjson

from noor.settings import TelemetrySettings
from router.context import RequestContext
from router.errors import OpenAIError
from router.telemetry import content
from router.telemetry.reasons import refusal_reason
from router.telemetry.timing import Timings

ACCESS_LOGGER = "noor.access"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``record.fields`` (a dict) is merged in."""

    _second: int = -1
    _prefix: str = ""

    def _ts(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self._ts(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal; fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


class BatchedLineHandler(logging.Handler):
    """Writes formatted lines to a file descriptor a batch at a time, not a ``write()`` per line.

    With the access log on, every request logs a line, and a handler that writes (and flushes) each one
    pays a system call per request, and wakes whatever reads the other end of a pipe (a container's log
    collector). Measured here (``benchmarks/overhead/log_lines.py``): an access line cost 11-31 µs of CPU
    through ``StreamHandler``, 8-16 µs batched. Lines are kept in order and written whole, when
    ``max_bytes`` are waiting, every ``interval_s`` (a daemon thread), at once for a warning or worse,
    and at exit (``logging.shutdown`` flushes handlers). A process killed outright loses at most ``interval_s`` of lines.
    """

    def __init__(self, fd: int = 2, *, max_bytes: int = 64 * 1024, interval_s: float = 0.2) -> None:
        super().__init__()
        self._fd = fd
        self._max_bytes = max_bytes
        self._interval_s = interval_s
        self._lines: list[bytes] = []
        self._size = 0
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held (Handler.handle)
        try:
            line = (self.format(record) + "\n").encode("utf-8", errors="replace")
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max_bytes or record.levelno >= logging.WARNING:
            self._write()
        elif self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_every, name="log-flusher", daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if not self._lines:
            return
        view = memoryview(b"".join(self._lines))
        self._lines, self._size = [], 0
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            pass  # stderr gone: nothing else to tell it to

    def _flush_every(self) -> None:
        while True:
            time.sleep(self._interval_s)
            self.flush()

    def close(self) -> None:
        self.flush()
        super().close()


def configure_logging(settings: TelemetrySettings, stream=None) -> logging.Handler:
    """Send all logs to ``stream`` (default: stderr, written in batches by ``BatchedLineHandler``) in the
    configured format; returns the handler installed.

    Called by the process entry points (``noor serve``/``noor up``, ``create_app``), never by the
    Gateway itself, so a test or an embedding application keeps its own logging.
    """
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else BatchedLineHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_noor", False)]:
        root.removeHandler(old)
        old.close()  # what it still holds is written
    handler._noor = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Nothing here prints thread or process names; not collecting them saves ~1.5 µs per record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return handler


class AccessLog:
    """Writes the access line of each finished request."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger(ACCESS_LOGGER)

    def write(self, ctx: RequestContext, t: Timings) -> None:
        log = self.log
        if not log.isEnabledFor(logging.INFO):
            return
        # makeRecord + handle is what log.info does, minus finding the caller by walking the stack
        # (~7 µs, and the caller is always this line).
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, "access", None, None,
                                  extra={"fields": access_fields(ctx, t)}))


def access_fields(ctx: RequestContext, t: Timings) -> dict[str, object]:
    identity, model, ep, usage = ctx.identity, ctx.model, ctx.endpoint, ctx.usage
    fields: dict[str, object] = {
        "request_id": ctx.request_id,
        "tenant": identity.tenant_id if identity is not None else None,
        "key": identity.key_id if identity is not None else None,
        "kind": ctx.kind,
        "model": model.name if model is not None else None,
        "pool": model.pool if model is not None else None,
        "endpoint": ep.name if ep is not None else None,
        "stream": ctx.stream,
        "status": ctx.status,
        "outcome": ctx.outcome,
        "input_tokens": usage.prompt_tokens if usage is not None else None,
        "output_tokens": usage.completion_tokens if usage is not None else None,
        "latency_ms": _ms(t.total),
        "ttft_ms": _ms(t.ttft),
        "queue_ms": _ms(t.queue_wait),
        "gateway_ms": _ms(t.pre_upstream),
    }
    if ctx.error is not None:
        # The error's code, never its message: an engine's message may quote the request.
        fields["error"] = getattr(ctx.error, "code", None) or type(ctx.error).__name__
        if isinstance(ctx.error, OpenAIError):
            fields["reason"] = refusal_reason(ctx.error)
    if ctx.capture is not None:
        fields["prompt"] = content.prompt_json(ctx)
        fields["completion"] = content.completion_text(ctx)
    return fields
