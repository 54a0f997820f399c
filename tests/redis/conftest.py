"""A real redis-server for the whole session, emptied before each test."""

from __future__ import annotations

import pytest
import redis

from tests.redis_server import REDIS_BIN, RedisServer

pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason="redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server():
    if REDIS_BIN is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    return redis_server.url
