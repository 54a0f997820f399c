"""A whole capacity sign-off: make the run's tenants, run Locust headless over the rate sweep, judge each
step, reconcile with the usage ledger, write the report.

Locust runs in a child process: it monkey-patches the standard library with gevent at import, which
must not happen inside the CLI (or a test process) that calls this. The child and this process share
only files in the run folder, plus the tenants' keys, passed in the child's environment (never on disk).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import loadtest
from loadtest.config import LoadConfig
from loadtest.ledger import Reconciliation, expected_counts, fetch, reconcile
from loadtest.provision import TENANTS_ENV, AdminClient, RunTenant, provision
from loadtest.report import write_report
from loadtest.results import RunData, SignoffResult, evaluate
from loadtest.slo import SLO

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SLO_EXAMPLE = Path(__file__).with_name("slo.example.toml")


class SignoffError(RuntimeError):
    """The sign-off could not be run (as opposed to: it ran and the SLO failed)."""


@dataclass
class SignoffPlan:
    gateway: str
    config: LoadConfig
    out: Path
    slo_path: Path | None = None
    admin_token: str | None = None
    target_rate: float | None = None
    engines: list[str] = field(default_factory=list)
    note: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.gateway = self.gateway.rstrip("/")
        if self.target_rate is not None:
            rates = self.config.sweep.step_rates()
            if not any(abs(r - self.target_rate) < 1e-9 for r in rates):
                # the target itself is always tried (if the steps below it hold)
                self.config.sweep.rates = sorted([*rates, self.target_rate])

    @property
    def slo(self) -> SLO | None:
        return SLO.load(self.slo_path) if self.slo_path else None

    def budget_s(self) -> float:
        """How long the sweep may take at most (every step drained to its timeout), plus start-up."""
        sw = self.config.sweep
        return len(sw.step_rates()) * (sw.warmup_s + sw.duration_s + sw.drain_s) + 60


def locust_command(plan: SignoffPlan) -> list[str]:
    out = plan.out
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", plan.gateway,
        "--noor-config", str(out / "profile.json"), "--noor-out", str(out), "--noor-run-id", plan.run_id,
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"), "--only-summary",
        "--loglevel", "WARNING", "--stop-timeout", "5",
    ]
    if plan.slo_path:
        cmd += ["--noor-slo", str(plan.slo_path)]
    if plan.engines:
        cmd += ["--noor-engine-metrics", ",".join(plan.engines)]
    return cmd


def run_signoff(plan: SignoffPlan, say: Callable[[str], None] = print) -> SignoffResult:
    slo = plan.slo  # parse before doing anything: a broken SLO file fails at once
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "profile.json").write_text(plan.config.model_dump_json(indent=2))
    since = time.time() - 1.0
    admin = AdminClient(plan.gateway, plan.admin_token)
    try:
        tenants = _tenants(plan, admin)
        say(f"run {plan.run_id}: {len(tenants)} tenants, steps {', '.join(f'{r:g}' for r in plan.config.sweep.step_rates())}"
            f" requests/s, results in {plan.out}")
        env = {**os.environ, TENANTS_ENV: json.dumps([t.with_key() for t in tenants])}
        root = str(Path(loadtest.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("NOOR_LOADTEST_ADMIN_TOKEN", None)  # the child needs no admin rights: its tenants exist
        code, output = _run_locust(locust_command(plan), env, plan.budget_s() + 60, plan.out / "locust.out", say)
        if not (plan.out / "steps.json").exists():
            raise SignoffError(f"Locust exited with {code} before writing results:\n{output[-2000:]}")
        data = RunData.load(plan.out)
        result = evaluate(data, slo, plan.target_rate)
        result.note = plan.note
        result.ledger = _ledger(plan, admin, data, tenants, since, say)
    finally:
        admin.close()
    (plan.out / "signoff.json").write_text(json.dumps(result.to_dict(), indent=2))
    write_report(result, plan.out)
    return result


def _run_locust(cmd: list[str], env: dict, timeout_s: float, log_path: Path, say: Callable[[str], None]) -> tuple[int, str]:
    """Run Locust, keep its whole output in ``log_path`` and pass the sweep's progress lines on."""
    lines: list[str] = []
    with open(log_path, "w") as log, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, start_new_session=True) as proc:
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                _, sep, msg = line.partition("noor.loadtest: ")
                if sep:
                    say(msg.rstrip())
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
    if expired.is_set():
        raise SignoffError(f"Locust did not finish within {timeout_s:.0f} s")
    return code, "".join(lines)


def _tenants(plan: SignoffPlan, admin: AdminClient) -> list[RunTenant]:
    specs = plan.config.tenants
    if all(t.key for t in specs):
        return [RunTenant(t.name, t.id, t.key, t.weight) for t in specs]  # type: ignore[arg-type]
    if not plan.admin_token:
        raise SignoffError("the run creates its tenants through the admin API: give --admin-token "
                           "(or NOOR_SERVER__ADMIN_TOKEN), or API keys for every tenant in the profile")
    try:
        return provision(admin, specs, plan.run_id, plan.config.mix.model)
    except Exception as exc:
        raise SignoffError(f"could not create the run's tenants on {plan.gateway}: {exc}") from exc


def _ledger(plan: SignoffPlan, admin: AdminClient, data: RunData, tenants: list[RunTenant], since: float,
            say: Callable[[str], None]) -> Reconciliation:
    if not plan.admin_token or not all(t.id for t in tenants):
        return Reconciliation([], checked=False, note="no admin token or tenant ids: the ledger was not read")
    try:
        ledger = fetch(admin, tenants, since, expected_counts(data.records, tenants))
    except Exception as exc:  # noqa: BLE001 - the sign-off's figures still stand without the ledger
        say(f"could not read the usage ledger: {exc}")
        return Reconciliation([], checked=False, note=f"reading the ledger failed: {exc}")
    return reconcile(data.records, ledger, tenants)
