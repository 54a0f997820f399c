"""``noor ledger``: run the Redis usage-ledger aggregator on its own, or fold what is pending and exit.

Every gateway on Redis already runs an aggregator (``NOOR_STORE__LEDGER_AGGREGATE``); a deployment that
prefers gateways to do nothing but serve turns that off and runs this instead (any number of copies:
the consumer group hands each record to one of them, and folding is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from rich.console import Console

from noor.settings import Settings
from router.store import open_store

console = Console()


def ledger(
    once: Annotated[bool, typer.Option(help="Fold what is pending, print how much, and exit.")] = False,
) -> None:
    """Fold usage records from the Redis Stream into per tenant/model/day totals (Redis stores only)."""
    from router.store.redis import RedisStore

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def go() -> int:
        store = open_store(settings.store_url, settings.store)
        if not isinstance(store, RedisStore):
            await store.close()
            console.print("[red]the ledger aggregator runs on a Redis store (NOOR_STORE__URL=redis://...)[/red]")
            raise typer.Exit(2)
        try:
            if once:
                await store.ledger.catch_up()
            else:
                console.print(f"aggregating as consumer {store.ledger.consumer}; Ctrl-C stops")
                await store.ledger.run()
            return store.ledger.folded
        finally:
            await store.close()

    try:
        folded = asyncio.run(go())
    except KeyboardInterrupt:
        return
    console.print(f"folded {folded} usage records")
