"""Locust: several tenants' OpenAI-SDK clients, open-loop arrivals, and a rate sweep judged against an SLO.

Run it standalone (web UI or headless) or let ``noor signoff`` run it::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --noor-config loadtest/traffic.example.toml --noor-slo loadtest/slo.example.toml \\
        --noor-admin-token $NOOR_SERVER__ADMIN_TOKEN --noor-out runs/now

How the load is made: one ``ArrivalUser`` runs an arrival process (Poisson or burstier gamma gaps at
the rate the sweep says) and spawns one greenlet per arrival, each a single chat request through the
tenant's own ``openai.OpenAI`` client. Arrivals never wait for answers (open loop); a cap on requests
in flight (``arrivals.max_concurrency``) keeps the load generator itself safe, and an arrival over the
cap is counted as a ``client_overload`` error instead of silently slowing the offered rate.
``SweepShape`` keeps that one user alive while the sweep runs and ends the test when it is done.

What Locust shows (UI, ``--csv``, ``--html``): one row per kind of request (``CHAT stream``,
``CHAT non-stream``: end-to-end time; "size" = output tokens) and rows ``LLM TTFT``, ``LLM TPOT``,
``LLM ITL``; ``TOKENS in`` / ``TOKENS out`` carry token counts in the time columns. Failures are
grouped by kind (``http_503``, ``timeout``, ``client_overload``…). The same numbers, per request,
go to ``<out>/requests.jsonl`` for the sign-off report.

Single-process only (Locust's local runner): the arrival process and the sweep live in this process.
Distributed runs would split one Poisson stream over workers and are not supported.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from pathlib import Path

import gevent
from gevent.pool import Pool
from locust import LoadTestShape, User, constant, events, task
from locust.runners import LocalRunner

from loadtest.analysis import judge_step
from loadtest.arrivals import Arrivals
from loadtest.client import RequestResult, call_chat, make_client
from loadtest.config import LoadConfig, load_config
from loadtest.mix import TrafficMix
from loadtest.provision import TENANTS_ENV, AdminClient, RunTenant, provision
from loadtest.scrape import Scraper
from loadtest.slo import SLO, Verdict
from loadtest.sweep import Phase, State, Sweep

log = logging.getLogger("noor.loadtest")


class LoadError(Exception):
    """A failed request as Locust's failure table shows it: grouped by kind, details left out."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)


class Run:
    """One load test: tenants' clients, the mix, the sweep, and where the results go."""

    def __init__(self, environment, config: LoadConfig, slo: SLO | None, out: Path, tenants: list[RunTenant],
                 run_id: str, host: str, engines: list[str]) -> None:
        self.env, self.config, self.slo, self.out, self.run_id, self.host = environment, config, slo, out, run_id, host
        self.tenants = tenants
        sweep = config.sweep
        self.clients = {t.name: make_client(host, t.key, sweep.request_timeout_s) for t in tenants}
        for c in self.clients.values():
            _ = c.chat.completions.with_raw_response  # the SDK loads its resources lazily: not on the first arrival
        self.seed = config.mix.seed if config.mix.seed is not None else random.randrange(2**32)
        self.mix = TrafficMix(config.mix, [(t.name, t.weight) for t in tenants], random.Random(self.seed))
        arrival_seed = config.arrivals.seed if config.arrivals.seed is not None else self.seed + 1
        self.arrivals = Arrivals(config.arrivals.burstiness, random.Random(arrival_seed))
        self.pool = Pool(config.arrivals.max_concurrency)
        self.sweep = Sweep(sweep.step_rates(), sweep.warmup_s, sweep.duration_s, sweep.drain_s,
                           in_flight=lambda: len(self.pool), judge=self._judge, stop_on_fail=sweep.stop_on_fail)
        self.records: list[RequestResult] = []
        self.summaries: dict[int, dict] = {}
        self.seq = 0
        out.mkdir(parents=True, exist_ok=True)
        self.sink = open(out / "requests.jsonl", "w")
        self.started_at = time.time()
        self.scraper = Scraper.for_run(host if config.metrics.gateway else None, config.metrics.engines + engines,
                                       out / "metrics.jsonl", config.metrics.interval_s)
        self._write("tenants.json", [t.public() for t in tenants])
        self._write("config.json", config.model_dump(mode="json"))
        self.scraper.start()

    # -- arrivals -------------------------------------------------------------------------------
    def loop(self) -> None:
        """The arrival process: runs until the sweep is done (then the shape ends the test)."""
        self.sweep.start()
        announced = -1
        due: float | None = None  # when the next arrival is due (monotonic)
        while True:
            st = self.sweep.poll()
            if st.phase is Phase.DONE:
                return
            if st.step != announced and st.phase is Phase.WARMUP:
                announced = st.step
                sw = self.config.sweep
                log.warning("step %d: %g requests/s (%g s warm-up, %g s measured)", st.step, st.rate, sw.warmup_s,
                            sw.duration_s)
            if st.rate <= 0:
                due = None
                gevent.sleep(0.02)
                continue
            now = time.monotonic()
            if due is None:
                due = now + self.arrivals.gap(st.rate)
            if due > st.active_until:
                gevent.sleep(max(0.0, st.active_until - now))  # no arrival left in this rate's window
                due = None
                continue
            # Arrival times are laid on an absolute timeline: a late wake-up (a busy CPU, a slow greenlet)
            # is caught up at once instead of stretching every later gap, which would lower the rate.
            if due > now:
                gevent.sleep(due - now)
            due += self.arrivals.gap(st.rate)
            st = self.sweep.poll()
            if st.phase in (Phase.WARMUP, Phase.MEASURE):
                self.arrive(st)

    def arrive(self, st: State) -> None:
        spec = self.mix.draw()
        self.seq += 1
        result = RequestResult(self.seq, spec.tenant, st.step, st.phase.value, st.rate, spec.stream, spec.max_tokens,
                               spec.system_prompt)
        if self.pool.full():
            result.started_at, result.error = time.time(), "client_overload"
            result.error_detail = f"{self.config.arrivals.max_concurrency} requests already in flight"
            self.record(result)
            return
        self.pool.spawn(self._request, spec, result)

    def _request(self, spec, result: RequestResult) -> None:
        mix = self.config.mix
        call_chat(self.clients[spec.tenant], mix.model, spec, result, ignore_eos=mix.ignore_eos, temperature=mix.temperature)
        self.record(result)

    # -- results --------------------------------------------------------------------------------
    def record(self, r: RequestResult) -> None:
        self.records.append(r)
        self.sink.write(json.dumps(r.to_dict()) + "\n")
        self.sink.flush()
        fire = self.env.events.request.fire
        ctx = {"tenant": r.tenant, "step": r.step, "rate": r.rate}
        name = "stream" if r.stream else "non-stream"
        fire(request_type="CHAT", name=name, response_time=r.e2e_ms or 0.0, response_length=r.completion_tokens or 0,
             exception=LoadError(r.error) if r.error else None, context=ctx)
        if not r.ok:
            return
        if r.ttft_ms is not None:
            fire(request_type="LLM", name="TTFT", response_time=r.ttft_ms, response_length=0, exception=None, context=ctx)
        if r.tpot_ms is not None:
            fire(request_type="LLM", name="TPOT", response_time=r.tpot_ms, response_length=0, exception=None, context=ctx)
        for gap in r.itl_ms:
            fire(request_type="LLM", name="ITL", response_time=gap, response_length=0, exception=None, context=ctx)
        fire(request_type="TOKENS", name="in", response_time=r.prompt_tokens or 0, response_length=r.prompt_tokens or 0,
             exception=None, context=ctx)
        fire(request_type="TOKENS", name="out", response_time=r.completion_tokens or 0,
             response_length=r.completion_tokens or 0, exception=None, context=ctx)

    def _judge(self, step: int) -> Verdict | None:
        rec = self.sweep.steps[step]
        window = (rec.measure_end - rec.measure_start) if rec.measure_start and rec.measure_end else None
        if self.slo is None:
            return None
        summary, verdict = judge_step(self.records, step, window, self.slo)
        self.summaries[step] = summary.to_dict()
        log.warning("step %d at %g/s: %s%s", step, rec.rate, "PASS" if verdict.passed else "FAIL",
                    "" if verdict.passed else " (" + "; ".join(verdict.broken) + ")")
        return verdict

    def finish(self) -> None:
        self.sweep.stop("test stopped")
        self.pool.join(timeout=self.config.sweep.drain_s)
        self.pool.kill()
        self.scraper.stop()
        self.sink.close()
        for c in self.clients.values():
            c.close()
        self._write("steps.json", {**self.sweep.to_dict(), "summaries": self.summaries})
        self._write("run.json", {
            "run_id": self.run_id, "host": self.host, "started_at": self.started_at, "ended_at": time.time(),
            "seed": self.seed, "slo": self.slo.to_dict() if self.slo else None, "requests": len(self.records),
        })

    def _write(self, name: str, data) -> None:
        (self.out / name).write_text(json.dumps(data, indent=2))


_RUN: Run | None = None
_FATAL: str | None = None


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    g = parser.add_argument_group("Noor sign-off")
    g.add_argument("--noor-config", default="", help="Traffic profile (TOML/YAML/JSON); default: the built-in chat mix.")
    g.add_argument("--noor-slo", default="", help="SLO file: judge each step and stop at the first failure.")
    g.add_argument("--noor-out", default="", help="Folder for requests.jsonl, steps.json, metrics.jsonl.")
    g.add_argument("--noor-admin-token", default="", env_var="NOOR_LOADTEST_ADMIN_TOKEN",
                   help="Gateway admin token, to create the run's tenants and keys.")
    g.add_argument("--noor-run-id", default="", help="Names the run's tenants; default: a fresh id.")
    g.add_argument("--noor-engine-metrics", default="", help="Comma-separated engine URLs whose /metrics to sample.")


@events.test_start.add_listener
def _start(environment, **_kw) -> None:
    global _RUN, _FATAL
    if not isinstance(environment.runner, LocalRunner):
        _FATAL = "the Noor load test runs in one process (no --master/--worker)"
        log.error(_FATAL)
        return
    try:
        opts = environment.parsed_options
        host = (environment.host or "").rstrip("/")
        if not host:
            raise ValueError("give the gateway with --host")
        config = load_config(Path(opts.noor_config) if opts.noor_config else None)
        slo = SLO.load(Path(opts.noor_slo)) if opts.noor_slo else None
        run_id = opts.noor_run_id or uuid.uuid4().hex[:8]
        out = Path(opts.noor_out or f"loadtest-runs/{run_id}")
        if os.environ.get(TENANTS_ENV):
            tenants = [RunTenant(**t) for t in json.loads(os.environ[TENANTS_ENV])]
        else:
            with AdminClient(host, opts.noor_admin_token or None) as admin:
                tenants = provision(admin, config.tenants, run_id, config.mix.model)
        engines = [e for e in opts.noor_engine_metrics.split(",") if e.strip()]
        _RUN = Run(environment, config, slo, out, tenants, run_id, host, engines)
        log.info("run %s: %d tenants, rates %s/s, results in %s", run_id, len(tenants),
                    ", ".join(f"{r:g}" for r in _RUN.sweep.rates), out)
    except Exception as exc:
        _FATAL = f"{type(exc).__name__}: {exc}"
        log.error("could not start the load test: %s", _FATAL)
        environment.process_exit_code = 2


@events.test_stop.add_listener
def _stop(environment, **_kw) -> None:
    global _RUN
    if _RUN is not None:
        _RUN.finish()
        _RUN = None


class ArrivalUser(User):
    """Not a user: the arrival process. Exactly one runs; it spawns a greenlet per request."""

    fixed_count = 1
    wait_time = constant(0)

    @task
    def arrivals(self) -> None:
        run = _RUN
        if run is None:
            gevent.sleep(0.1)
            return
        run.loop()
        gevent.sleep(1.0)  # the sweep is over; the shape ends the test on its next tick


class SweepShape(LoadTestShape):
    """Keeps the one arrival user alive while the sweep runs; ends the test when the sweep is done."""

    def tick(self):
        if _FATAL is not None:
            return None
        if _RUN is not None and _RUN.sweep.done:
            return None
        return (1, 1)
