"""Reading what the gateway's telemetry exported: /metrics samples, finished spans, captured log lines."""

from __future__ import annotations

import logging

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client.parser import text_string_to_metric_families

from router.telemetry.logs import JsonFormatter


class Samples:
    """One scrape of a /metrics page, parsed with prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    @classmethod
    def scrape(cls, url: str) -> Samples:
        r = httpx.get(url, timeout=10)
        r.raise_for_status()
        return cls(r.text)

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(
            s.value for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str, **labels: str) -> bool:
        return any(s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) for s in self.samples)


def spans_of(spans: list[ReadableSpan], request_id: str) -> list[ReadableSpan]:
    """Every span of the trace whose request span carries ``noor.request.id == request_id``."""
    roots = [s for s in spans if (s.attributes or {}).get("noor.request.id") == request_id]
    assert len(roots) == 1, f"expected one request span for {request_id}, got {len(roots)}"
    trace_id = roots[0].context.trace_id
    return [s for s in spans if s.context.trace_id == trace_id]


def span_texts(span: ReadableSpan) -> list[str]:
    """Every string a span exports: name, attribute keys and values, events, status, resource."""
    out = [span.name, str(span.status.description or "")]
    for k, v in (span.attributes or {}).items():
        out += [k, str(v)]
    for ev in span.events:
        out.append(ev.name)
        out += [f"{k}={v}" for k, v in (ev.attributes or {}).items()]
    out += [f"{k}={v}" for k, v in span.resource.attributes.items()]
    return out


class LogCapture(logging.Handler):
    """Every log record of the process (all threads), rendered as the JSON line it would be written as."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [self.format(r) for r in self.records]

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)
