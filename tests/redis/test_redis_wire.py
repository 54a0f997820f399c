"""The pipelined request-path client against a real redis-server: replies reach the right callers when
many commands share the connection, scripts load themselves, error replies raise, and a Redis that
stops answering, restarts or drops the connection fails the waiting commands in the shapes the breaker
knows — and the next command reconnects.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from router.store.redis_link import REDIS_DOWN, make_client
from router.store.redis_wire import PipelinedRedis
from tests.redis_server import RedisServer

SCRIPT = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"


@pytest.fixture
async def wire(redis_url):
    client = make_client(redis_url, socket_timeout_s=2.0)
    w = PipelinedRedis.like(client)
    yield w
    await w.close()
    await client.aclose()


async def test_concurrent_commands_each_get_their_own_reply(wire):
    await wire.execute("SET", "a", "1")
    replies = await asyncio.gather(*(wire.execute("INCRBY", f"n{i % 7}", i) for i in range(500)))
    totals: dict[int, int] = {}
    for i, reply in enumerate(replies):
        totals[i % 7] = totals.get(i % 7, 0) + i
        assert reply == totals[i % 7]  # INCRBY replies in order, per key
    assert await wire.execute("GET", "a") == b"1"
    assert await wire.execute("GET", "missing") is None


async def test_scripts_load_themselves_and_errors_raise(wire, redis_url):
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script(SCRIPT)
    assert await wire.evalsha(script.sha, script.script, ["k"], ["v", 41]) == [b"k", b"v", 42]  # NOSCRIPT, then loaded
    assert await wire.evalsha(script.sha, script.script, ["k"], ["w", 1]) == [b"k", b"w", 2]
    with pytest.raises(ResponseError, match="WRONGTYPE|wrong kind"):
        await wire.execute("SET", "s", "x")
        await wire.execute("LPUSH", "s", "y")
    assert await wire.execute("PING") == b"PONG"  # the connection survives an error reply
    await client.aclose()


async def test_db_and_credentials_come_from_the_redis_py_client(redis_server):
    with redis.Redis.from_url(redis_server.url) as r:
        r.execute_command("ACL", "SETUSER", "noor", "on", ">s3cret", "~*", "+@all")
    client = make_client(f"redis://noor:s3cret@127.0.0.1:{redis_server.port}/3")
    wire = PipelinedRedis.like(client)
    try:
        await wire.execute("SET", "where", "db3")
        with redis.Redis(host="127.0.0.1", port=redis_server.port, db=3) as r:
            assert r.get("where") == b"db3"
    finally:
        await wire.close()
        await client.aclose()
        with redis.Redis.from_url(redis_server.url) as r:
            r.execute_command("ACL", "DELUSER", "noor")


async def test_unanswered_commands_time_out_and_the_next_one_reconnects():
    with RedisServer() as server:
        client = make_client(server.url, socket_timeout_s=0.3)
        wire = PipelinedRedis.like(client)
        try:
            await wire.execute("SET", "k", "v")
            os.killpg(server.proc.pid, signal.SIGSTOP)  # the socket stays open, nothing answers
            try:
                results = await asyncio.gather(*(wire.execute("GET", "k") for _ in range(5)), return_exceptions=True)
            finally:
                os.killpg(server.proc.pid, signal.SIGCONT)
            assert all(isinstance(r, TimeoutError) and isinstance(r, REDIS_DOWN) for r in results)
            assert await wire.execute("GET", "k") == b"v"  # a fresh connection, replies matched again
        finally:
            await wire.close()
            await client.aclose()


async def test_each_command_gets_its_whole_timeout_from_its_own_sending():
    """One watchdog per connection, armed for the oldest unanswered command: a command sent after an
    answered one must not inherit the earlier one's deadline, nor wait for it past its own."""
    with RedisServer() as server:
        client = make_client(server.url, socket_timeout_s=0.4)
        wire = PipelinedRedis.like(client)
        try:
            await wire.execute("SET", "k", "v")  # the watchdog is armed for ~0.4 s from now
            await asyncio.sleep(0.25)
            os.killpg(server.proc.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                with pytest.raises(TimeoutError):
                    await wire.execute("GET", "k")
                waited = time.monotonic() - t0
            finally:
                os.killpg(server.proc.pid, signal.SIGCONT)
            assert 0.35 <= waited < 1.0, waited
            assert await wire.execute("GET", "k") == b"v"
        finally:
            await wire.close()
            await client.aclose()


async def test_a_dropped_connection_fails_its_commands_and_heals():
    with RedisServer() as server:
        client = make_client(server.url, socket_timeout_s=2.0)
        wire = PipelinedRedis.like(client)
        try:
            assert await wire.execute("PING") == b"PONG"
            with redis.Redis.from_url(server.url) as r:
                r.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(0.05)
            assert await wire.execute("PING") == b"PONG"
            server.kill()
            with pytest.raises(REDIS_DOWN):
                await wire.execute("PING")
            server.start()
            assert await wire.execute("PING") == b"PONG"
        finally:
            await wire.close()
            await client.aclose()


async def test_many_commands_in_one_write_and_an_error_among_them(wire):
    replies = await wire.execute_many([("RPUSH", "l", i) for i in range(300)])
    assert replies == list(range(1, 301))
    await wire.execute("SET", "str", "x")
    with pytest.raises(ResponseError):
        await wire.execute_many([("GET", "str"), ("LPUSH", "str", "y"), ("GET", "str")])
    assert await wire.execute_many([]) == []
    assert await wire.execute("LLEN", "l") == 300


async def test_a_command_that_may_wait_leaves_with_the_next_one_or_on_its_own(wire, redis_url):
    await wire.execute("PING")  # connected
    transport = wire._wire.transport
    writes: list[bytes] = []
    real_write = transport.write

    def spy(data: bytes) -> None:
        writes.append(data)
        real_write(data)

    transport.write = spy
    try:
        waiting = wire.queue("INCRBY", "lazy", 5, within_s=10.0)
        await asyncio.sleep(0.05)
        assert writes == [] and not waiting.done()  # held: nothing else to ride with yet
        assert await wire.execute("INCRBY", "lazy", 1) == 6  # the held one went first, in the same write
        assert await waiting == 5 and len(writes) == 1
        alone = wire.queue("INCRBY", "lazy", 10, within_s=0.05)
        assert await asyncio.wait_for(alone, 5) == 16  # nothing came along: it left after its wait
        assert len(writes) == 2
        held = wire.queue("SET", "lazy:closing", "1", within_s=10.0)
    finally:
        transport.write = real_write
    await wire.close()  # what is held still leaves before the connection closes (its reply is not read)
    with pytest.raises(ConnectionError):
        await held
    client = aioredis.Redis.from_url(redis_url)
    for _ in range(100):  # Redis reads the closed connection's last bytes in its own time
        if await client.get("lazy:closing") == b"1":
            break
        await asyncio.sleep(0.02)
    assert await client.get("lazy:closing") == b"1"
    await client.aclose()
