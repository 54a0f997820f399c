"""CPU cost of each stage of Noor's request path, in microseconds per call, without servers.

The end-to-end benchmark (gateway_overhead.py) says how much a request costs in all; this says where:
each stage is called in a loop on the benchmark's request and timed in CPU time (``process_time``),
which other work on the machine does not inflate the way it inflates wall time.

    python benchmarks/overhead/stages.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models.catalog import Catalog  # noqa: E402
from router.auth import Authenticator  # noqa: E402
from router.context import RequestContext  # noqa: E402
from router.keys import create_key, hash_key  # noqa: E402
from router.metering import Meter  # noqa: E402
from router.prompt_tokens import PromptTokenCounter  # noqa: E402
from router.store.base import TenantLimits  # noqa: E402
from router.store.sqlite import SQLiteStore  # noqa: E402
from router.validation import parse_json, validate  # noqa: E402
from serving.backends.openai_format import usage_from_body  # noqa: E402
from targets import BENCH_LIMITS, find_tokenizer  # noqa: E402

BODY = orjson.dumps({
    "model": "bench-model", "messages": [{"role": "user", "content": "Hello! Say something nice about the sea."}],
    "max_tokens": 16,
})
RESPONSE = orjson.dumps({
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 1700000000, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
})


def per_call_us(fn, n: int) -> float:
    for _ in range(min(1000, n)):
        fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


async def per_call_us_async(fn, n: int) -> float:
    for _ in range(min(1000, n)):
        await fn()
    t0 = time.process_time()
    for _ in range(n):
        await fn()
    return (time.process_time() - t0) / n * 1e6


async def amain(n: int) -> None:
    tok = find_tokenizer()
    spec = {"pool": "stub", "context_length": 2048, **({"tokenizer": str(tok)} if tok else {})}
    catalog = Catalog.from_dict({"pools": {"stub": {"endpoints": ["http://127.0.0.1:1"]}}, "models": {"bench-model": spec}})
    tmp = Path(tempfile.mkdtemp())
    store = SQLiteStore(tmp / "noor.db")
    tenant = await store.create_tenant("bench", limits=TenantLimits(**BENCH_LIMITS))
    _, secret = await create_key(store, tenant.id)
    auth = Authenticator(store)
    header = f"Bearer {secret}"
    identity = await auth.authenticate(header)
    counter = PromptTokenCounter(catalog, tmp)
    meter = Meter(store, spool_path=tmp / "spool.jsonl", max_batch=10**9)

    def validated() -> RequestContext:
        ctx = RequestContext(request_id="req_x", kind="chat", body=orjson.loads(BODY))
        validate(ctx, identity, catalog, counter)
        return ctx

    ctx = validated()
    prefix, ids = os.urandom(10).hex(), itertools.count()  # router/openai_api.py's request ids
    rows = [
        ("request id (uuid4().hex, for comparison)", per_call_us(lambda: uuid.uuid4().hex, n)),
        ("request id (prefix + counter, as served)", per_call_us(lambda: f"req_{prefix}{next(ids):012x}", n)),
        ("hash_key (sha256)", per_call_us(lambda: hash_key(secret), n)),
        ("store.auth_epoch (SQLite)", await per_call_us_async(store.auth_epoch, n)),
        ("authenticate (cached key)", await per_call_us_async(lambda: auth.authenticate(header), n)),
        ("parse_json (orjson)", per_call_us(lambda: parse_json(BODY), n)),
        ("count prompt tokens (tiktoken)", per_call_us(lambda: counter("bench-model", ctx.body), n)),
        ("parse + validate (incl. count)", per_call_us(validated, n)),
        ("orjson.dumps(body) for upstream", per_call_us(lambda: orjson.dumps(ctx.body), n)),
        ("usage_from_body (response)", per_call_us(lambda: usage_from_body(RESPONSE), n)),
        ("RequestContext()", per_call_us(lambda: RequestContext(request_id="req_x", kind="chat", body={}), n)),
    ]
    ctx.identity = identity
    rows.append(("meter.record", per_call_us(lambda: meter.record(ctx), n)))
    await store.close()
    print(f"tokenizer: {tok or 'none'}\n\n| stage | CPU µs per call |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    asyncio.run(amain(ap.parse_args().n))


if __name__ == "__main__":
    main()
