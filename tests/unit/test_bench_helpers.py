"""The gateway benchmark's pure helpers: merging several load generators' results, and the core layout."""

from __future__ import annotations

from benchmarks.overhead import layout
from benchmarks.overhead.loadgen import merge_rate, summary


def _result(offered: float, lat: list[float], errors: int = 0) -> dict:
    return {"mode": "rate", "offered": offered, "sent": len(lat) + errors, "sent_total": len(lat) + errors + 3,
            "ok": len(lat), "errors": errors, "error_kinds": {"status 500": errors} if errors else {},
            "achieved": float(len(lat)), "latency_ms": summary(lat), "lag_ms": summary([0.0]), "connections": 4,
            "loadgen_cpu": 0.1}


def test_merged_percentiles_come_from_every_sample_not_from_the_parts():
    fast, slow = [0.001] * 99, [0.1] * 99  # one generator saw 1 ms, the other 100 ms
    a, b = _result(500, fast, errors=1), _result(500, slow)
    a["baseline"], b["baseline"] = _result(500, [0.0005] * 99), _result(500, [0.0005] * 99)
    merged = merge_rate([a, b], [[{"latencies": fast, "lags": [0.0]}, {"latencies": [0.0005] * 99, "lags": [0.0]}],
                                 [{"latencies": slow, "lags": [0.0]}, {"latencies": [0.0005] * 99, "lags": [0.0]}]])
    assert merged["offered"] == 1000 and merged["ok"] == 198 and merged["errors"] == 1
    assert merged["error_kinds"] == {"status 500": 1} and merged["load_procs"] == 2
    assert merged["latency_ms"]["n"] == 198 and merged["latency_ms"]["p50"] == 100.0  # half are 100 ms
    assert merged["latency_ms"]["p99"] == 100.0 and merged["baseline"]["latency_ms"]["p99"] == 0.5
    assert merged["loadgen_cpu"] == 0.2


def test_auto_layout_gives_each_part_cores_of_its_own():
    got = layout.auto(list(range(16)))
    assert got == {"gateway_cores": "1", "redis_cores": "2", "stub_cores": "3,4", "stub_procs": 2,
                   "load_cores": "5,6,7,8", "load_procs": 4, "scaling_cores": "9,10,11,12,13,14,15"}
    small = layout.auto(list(range(8)))
    assert small["stub_procs"] == 1 and small["load_procs"] == 2 and small["scaling_cores"] == "6,7"
    assert layout.auto([0, 1]) is None  # this project's VM: the defaults stay
