"""Engine adapters by engine kind. Adding an engine: one adapter file, one line here."""

from __future__ import annotations

from typing import Any

from serving.backends.base import Backend


def make_backend(engine: str, url: str, **options: Any) -> Backend:
    if engine in ("vllm", "sim"):
        from serving.backends.vllm import VLLMBackend

        return VLLMBackend(url, engine=engine, **options)
    if engine == "triton":
        from serving.backends.triton import TritonBackend  # type: ignore[import-not-found]

        return TritonBackend(url, **options)
    raise ValueError(f"unknown engine kind {engine!r}")
