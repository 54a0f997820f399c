import orjson
import pytest

from serving.backends.openai_format import is_usage_only, strip_usage, usage_from_body, usage_from_chunk

CHUNK = (b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":"hi \\"usage\\":"},"logprobs":null,"finish_reason":null}],'
         b'"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3}}')


def test_usage_from_chunk_fast_path():
    u = usage_from_chunk(CHUNK)
    assert (u.prompt_tokens, u.completion_tokens) == (5, 3)


def test_usage_from_chunk_null_and_absent():
    assert usage_from_chunk(b'{"choices":[],"usage":null}') is None
    assert usage_from_chunk(b'{"choices":[{"index":0}]}') is None


def test_usage_not_last_falls_back_to_full_parse():
    data = orjson.dumps({"usage": {"prompt_tokens": 2, "completion_tokens": 4}, "choices": []})
    u = usage_from_chunk(data)
    assert (u.prompt_tokens, u.completion_tokens) == (2, 4)
    assert is_usage_only(data)


@pytest.mark.parametrize("data", [
    CHUNK,
    b'{"id":"x","choices":[{"delta":{}}],"usage":null}',
    orjson.dumps({"id": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 2}, "choices": [{"delta": {"content": "a"}}]}),
    orjson.dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                     "prompt_tokens_details": {"cached_tokens": 0}}}),
])
def test_strip_usage_removes_only_usage(data):
    expected = orjson.loads(data)
    expected.pop("usage")
    assert orjson.loads(strip_usage(data)) == expected


def test_usage_from_body():
    u = usage_from_body(b'{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}')
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (7, 1, 8)
    assert usage_from_body(b"not json") is None
