"""``noor signoff``: find the highest rate a pool sustains within its SLO, through the gateway, and say so.

Exit codes, for CI pipelines: 0 when ``--target-rate`` passed (without one: when some step passed),
1 when it did not, 2 when the sign-off could not run (gateway unreachable, no admin token…).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from noor.settings import Settings

console = Console()


def signoff(
    slo: Annotated[Path | None, typer.Option(help="SLO file (TOML/YAML); default: loadtest/slo.example.toml.",
                                             exists=True, dir_okay=False)] = None,
    target_rate: Annotated[float | None, typer.Option(help="Requests/s that must pass; it is always one of the steps.")] = None,
    gateway: Annotated[str | None, typer.Option(help="Gateway base URL; default: the local one `noor up` serves.")] = None,
    admin_token: Annotated[str | None, typer.Option(help="Admin token, to create the run's tenants and read "
                                                         "their ledger; default: NOOR_SERVER__ADMIN_TOKEN.")] = None,
    profile: Annotated[Path | None, typer.Option(help="Traffic profile (TOML/YAML/JSON); see "
                                                     "loadtest/traffic.example.toml.", exists=True, dir_okay=False)] = None,
    rates: Annotated[str | None, typer.Option(help="Comma-separated steps in requests/s, e.g. 0.5,1,2,4.")] = None,
    max_rate: Annotated[float | None, typer.Option(help="Highest step of the geometric sweep.")] = None,
    warmup: Annotated[float | None, typer.Option(help="Seconds of warm-up per step (not judged).")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds measured per step.")] = None,
    model: Annotated[str | None, typer.Option(help="Model to load.")] = None,
    tenants: Annotated[int | None, typer.Option(help="Number of equal tenants (overrides the profile's).")] = None,
    burstiness: Annotated[float | None, typer.Option(help="1 = Poisson arrivals; < 1 burstier.")] = None,
    engine_metrics: Annotated[list[str] | None, typer.Option("--engine-metrics",
                                                             help="Engine URL whose /metrics to sample (repeat).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder; default: <data dir>/signoff/<time>.")] = None,
    note: Annotated[str, typer.Option(help="A line for the report (e.g. what else shared the machine).")] = "",
    keep_going: Annotated[bool, typer.Option(help="Run every step even after one broke the SLO.")] = False,
) -> None:
    """Sweep the offered rate through the gateway, judge each step against the SLO, report the maximum sustainable rate."""
    from loadtest.config import LoadConfig, TenantSpec, load_config
    from loadtest.signoff import SLO_EXAMPLE, SignoffError, SignoffPlan, run_signoff

    settings = Settings()
    config: LoadConfig = load_config(profile)
    sw = config.sweep
    if rates:
        try:
            sw.rates = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError as exc:
            raise typer.BadParameter(f"--rates: {exc}") from exc
    if max_rate is not None:
        sw.max_rate = max_rate
    if warmup is not None:
        sw.warmup_s = warmup
    if duration is not None:
        sw.duration_s = duration
    sw.stop_on_fail = sw.stop_on_fail and not keep_going
    if model:
        config.mix.model = model
    if tenants:
        config.tenants = [TenantSpec(name=f"tenant-{i + 1}") for i in range(tenants)]
    if burstiness is not None:
        config.arrivals.burstiness = burstiness
    config = LoadConfig.model_validate(config.model_dump())  # re-validate the overridden fields
    base = gateway or f"http://{settings.server.host}:{settings.server.port}"
    if engine_metrics is None and gateway is None:
        engine_metrics = _local_engines(settings)  # the engines `noor up` started, if they answer
    folder = out or settings.data_dir / "signoff" / datetime.now().strftime("%Y%m%d-%H%M%S")
    plan = SignoffPlan(
        gateway=base, config=config, out=folder, slo_path=slo or SLO_EXAMPLE,
        admin_token=admin_token or settings.server.admin_token, target_rate=target_rate,
        engines=engine_metrics or [], note=note,
    )
    console.print(f"Signing off [bold]{config.mix.model}[/bold] via {base} against {plan.slo_path}: "
                  f"{plan.slo.describe() if plan.slo else ''}")
    try:
        result = run_signoff(plan, say=lambda m: console.print(m, highlight=False))
    except SignoffError as exc:
        console.print(f"[red]sign-off could not run:[/red] {exc}")
        raise typer.Exit(2) from exc

    table = Table("offered /s", "done", "errors", "TTFT p99 ms", "TPOT p99 ms", "out tok/s", "verdict")
    for s in result.steps:
        m = s.summary
        verdict = "–" if s.verdict is None else ("[green]pass[/green]" if s.verdict.passed else "[red]fail[/red]")
        table.add_row(f"{s.rate:g}", str(m.completed), f"{m.error_count} ({m.error_rate:.1%})",
                      _fmt(m.p("ttft", 0.99)), _fmt(m.p("tpot", 0.99)), _fmt(s.served_tokens_per_s), verdict)
    console.print(table)
    for s in result.steps:
        if s.verdict is not None and not s.verdict.passed:
            console.print(f"{s.rate:g}/s broke the SLO: " + "; ".join(s.verdict.broken), highlight=False)
    if result.max_rate is None:
        console.print("[red]No step met the SLO.[/red]")
    else:
        console.print(f"Maximum sustainable rate: [bold]{result.max_rate:g} requests/s[/bold] "
                      f"(≈ {result.max_tokens_per_s:.0f} output tokens/s)")
    if result.ledger is not None and result.ledger.checked:
        console.print("Usage ledger: " + ("[green]agrees[/green] with the load generator's counts" if result.ledger.agrees
                                          else "[red]differs[/red] from the load generator's counts (see the report)"))
    if result.target_rate is not None:
        console.print(f"Target {result.target_rate:g} requests/s: "
                      + ("[green]PASS[/green]" if result.target_passed else "[red]FAIL[/red]"))
    console.print(f"Report: {folder / 'report.html'} (and report.md)")
    raise typer.Exit(0 if result.passed else 1)


def _local_engines(settings: Settings) -> list[str]:
    """``noor up`` starts its engines on ``local.base_port`` upwards; keep those that serve vLLM metrics."""
    import httpx

    found = []
    for i in range(max(1, settings.local.replicas)):
        url = f"http://127.0.0.1:{settings.local.base_port + i}"
        try:
            if "vllm:" in httpx.get(url + "/metrics", timeout=1.0).text:
                found.append(url)
        except httpx.HTTPError:
            pass
    return found


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"
