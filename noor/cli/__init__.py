"""The ``noor`` command line: run the embedded default, the gateway, and manage tenants, keys, usage."""

from __future__ import annotations

import typer

from noor.cli import admin, ledger, signoff, up

app = typer.Typer(help="Noor: an OpenAI-compatible inference gateway for GPU clouds.", no_args_is_help=True)
app.command("up")(up.up)
app.command("serve")(up.serve)
app.command("prepare-model")(up.prepare_model)
app.add_typer(admin.tenants, name="tenants")
app.add_typer(admin.keys, name="keys")
app.command("usage")(admin.usage)
app.command("ledger")(ledger.ledger)
app.command("signoff")(signoff.signoff)


def main() -> None:
    app()
