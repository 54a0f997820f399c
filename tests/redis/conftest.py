"""A real redis-server for the whole session, emptied before each test."""

from __future__ import annotations

import pytest
import redis

from tests.redis_server import REDIS_BIN, RedisServer


def pytest_collection_modifyitems(config, items):
    if REDIS_BIN is None:
        skip = pytest.mark.skip(reason="redis-server is not installed (apt-get install redis-server)")
        for item in items:
            if "tests/redis/" in str(item.fspath):
                item.add_marker(skip)


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
