"""SmolLM2 on vLLM's AsyncLLM, speaking Triton's vLLM-backend tensor protocol (decoupled).

Why a Python-backend model rather than NVIDIA's vLLM backend: the vLLM backend ships only in NVIDIA's
GPU containers; this file runs the same engine (``AsyncLLM``, continuous batching) inside any Triton
with a Python backend, including the CPU-only ``tritonserver`` that nvidia-pytriton bundles. Its
tensors are the vLLM backend's, so one client serves both:

inputs   text_input (BYTES), stream (BOOL), sampling_parameters (BYTES, JSON), exclude_input_in_output
         (BOOL), return_finish_reason / return_num_input_tokens / return_num_output_tokens (BOOL)
outputs  text_output (BYTES), finish_reason (BYTES), num_input_tokens (UINT32),
         num_output_tokens (UINT32; per response: the tokens that response adds)

Every request runs as a coroutine on one asyncio loop in a background thread, so ``execute`` returns
at once and vLLM sees all requests together. When Triton says a request is cancelled (the client closed
its gRPC stream or HTTP connection), the vLLM request is aborted, which frees its batch slot; the count
of such cancellations is exported on Triton's metrics port as ``noor_model_cancelled_requests_total``,
and ``noor_model_inflight_requests`` says how many requests the engine holds (Triton's own pending
count is always ~0 for decoupled models that hand requests straight to an engine).

This file must stay self-contained (no Noor imports): NVIDIA's container serves it as it is.
"""

from __future__ import annotations

import asyncio
import json
import locale
import os
import threading
import time
import traceback
import uuid
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
MODEL_GLOB = "smollm2-135m-instruct*"

# SamplingParams fields a client may set through ``sampling_parameters`` (and their types, because
# Triton's HTTP ``parameters`` arrive as strings).
_INT = {"max_tokens", "min_tokens", "n", "seed", "top_k", "logprobs", "prompt_logprobs"}
_FLOAT = {"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"}
_BOOL = {"ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output"}
_LIST = {"stop", "stop_token_ids"}

# Fault injection for tests: with NOOR_TRITON_FAULT_INJECTION=1 in the server's environment, a
# request whose sampling_parameters carry {"noor_fail_after": N} gets an error response after N
# streamed responses, as an engine failing mid-generation would produce.
_FAULTS = os.environ.get("NOOR_TRITON_FAULT_INJECTION", "").lower() in ("1", "true", "yes")


def _utf8_locale() -> None:
    """Make open() default to UTF-8: the stub's embedded Python leaves the C locale (ASCII) in place
    and ignores PYTHONUTF8, and torch reads UTF-8 source templates without naming an encoding."""
    for name in ("", "C.UTF-8", "C.utf8", "en_US.UTF-8"):
        if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
            return
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue


def _find_model_dir(configured: str) -> str:
    """The prepared HF folder: the config parameter, then $NOOR_SMOLLM2_DIR, then a known cache."""
    if configured:
        return configured
    env = os.environ.get("NOOR_SMOLLM2_DIR")
    if env:
        return env
    roots = []
    if os.environ.get("NOOR_DATA_DIR"):
        roots.append(Path(os.environ["NOOR_DATA_DIR"]) / "models")
    roots += [Path.home() / ".local/share/noor/models", Path.home() / ".cache/noor/models"]
    found = [
        d
        for root in roots
        if root.is_dir()
        for d in root.glob(MODEL_GLOB)
        if d.is_dir() and (d / "config.json").is_file()
    ]
    # Folders models/prepare.py finished carry a marker; a folder still being written has none.
    complete = [d for d in found if any((d / m).exists() for m in (".noor-prepared.json", ".complete"))]
    if not complete:
        raise FileNotFoundError(
            f"no prepared SmolLM2 folder: set the model_dir parameter or NOOR_SMOLLM2_DIR (searched {roots})"
        )
    return str(max(complete, key=lambda d: d.stat().st_mtime))


def _flag(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _scalar(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)
    return value[0] if value.size else default


def _parse_sampling(raw: str) -> tuple[dict, dict]:
    """JSON sampling parameters -> (kwargs for SamplingParams, Noor-only knobs)."""
    params = json.loads(raw) if raw else {}
    if not isinstance(params, dict):
        raise ValueError("sampling_parameters must be a JSON object")
    noor = {k: params.pop(k) for k in list(params) if k.startswith("noor_")}
    out: dict = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in _INT:
            out[key] = int(value)
        elif key in _FLOAT:
            out[key] = float(value)
        elif key in _BOOL:
            out[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        elif key in _LIST:
            if isinstance(value, str):
                value = json.loads(value) if value.startswith("[") else [value]
            out[key] = list(value)
        # Anything else (lora_name, unknown keys) is ignored, as the vLLM backend would reject it.
    out.setdefault("max_tokens", None)  # OpenAI semantics: up to the context length.
    return out, noor


class TritonPythonModel:
    def initialize(self, args):
        self.logger = pb_utils.Logger
        self.model_config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        assert pb_utils.using_decoupled_model_transaction_policy(self.model_config), "smollm2 must be decoupled"
        params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}

        model_dir = _find_model_dir(params.get("model_dir", ""))
        _utf8_locale()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", params.get("cpu_kvcache_gib", "2") or "2")
        # Nothing here may reach a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs

        try:
            from vllm.v1.engine.async_llm import AsyncLLM as Engine
        except ImportError:  # older vLLM: the V0 engine under its old name
            from vllm import AsyncLLMEngine as Engine
        try:
            from vllm.sampling_params import RequestOutputKind

            self._delta = RequestOutputKind.DELTA
        except ImportError:
            self._delta = None
        self._SamplingParams = SamplingParams

        engine_args = AsyncEngineArgs(
            model=model_dir,
            served_model_name=self.model_name,
            max_model_len=int(params.get("max_model_len") or 2048),
            max_num_seqs=int(params.get("max_num_seqs") or 64),
            dtype=params.get("dtype") or "auto",
            gpu_memory_utilization=float(params.get("gpu_memory_utilization") or 0.85),
            disable_log_stats=True,
            enforce_eager=_flag(os.environ.get("NOOR_VLLM_ENFORCE_EAGER") or params.get("enforce_eager", "")),
        )
        self.logger.log_info(f"[smollm2] starting vLLM on {model_dir}")

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()

        async def start():
            return Engine.from_engine_args(engine_args)

        self._engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        self._inflight = 0

        self._cancelled_metric = self._gauge_inflight = None
        try:
            labels = {"model": self.model_name, "version": args["model_version"]}
            self._cancelled_family = pb_utils.MetricFamily(
                name="noor_model_cancelled_requests_total",
                description="Requests the client cancelled and the model aborted in vLLM",
                kind=pb_utils.MetricFamily.COUNTER,
            )
            self._inflight_family = pb_utils.MetricFamily(
                name="noor_model_inflight_requests",
                description="Requests the model's vLLM engine holds (running or waiting)",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            self._cancelled_metric = self._cancelled_family.Metric(labels=labels)
            self._gauge_inflight = self._inflight_family.Metric(labels=labels)
        except Exception as exc:  # metrics disabled on this server
            self.logger.log_warn(f"[smollm2] custom metrics unavailable: {exc}")
        self.logger.log_info("[smollm2] vLLM engine ready")

    # --- requests -------------------------------------------------------------------------------

    def execute(self, requests):
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request), self._loop)
        return None

    def _set_inflight(self, delta: int) -> None:
        self._inflight += delta
        if self._gauge_inflight is not None:
            self._gauge_inflight.set(self._inflight)

    async def _prompt(self, text: str):
        """The engine input for a text prompt (vLLM >= 0.2x renders and tokenizes it up front)."""
        renderer = getattr(self._engine, "renderer", None)
        if renderer is None or not hasattr(renderer, "render_cmpl_async"):
            return text
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        parsed = parse_model_prompt(self._engine.model_config, text)
        (engine_input,) = await renderer.render_cmpl_async([parsed])
        return engine_input

    async def _serve(self, request) -> None:
        sender = request.get_response_sender()
        request_id = f"{request.request_id() or 'triton'}-{uuid.uuid4().hex[:12]}"
        self._set_inflight(+1)
        started = False
        try:
            raw = _scalar(request, "text_input")
            if raw is None:
                raise ValueError("text_input is required")
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            stream = bool(_scalar(request, "stream", False))
            exclude = _scalar(request, "exclude_input_in_output")
            prepend = (not bool(exclude)) if exclude is not None else not stream
            if prepend and stream:
                raise ValueError("When streaming, `exclude_input_in_output` = False is not allowed.")
            raw_params = _scalar(request, "sampling_parameters")
            if isinstance(raw_params, bytes):
                raw_params = raw_params.decode("utf-8")
            if raw_params is None:
                raw_params = request.parameters()
            kwargs, noor = _parse_sampling(raw_params)
            if self._delta is not None:
                kwargs["output_kind"] = self._delta
            sampling = self._SamplingParams(**kwargs)
            want = {
                name: bool(_scalar(request, f"return_{name}", False))
                for name in ("finish_reason", "num_input_tokens", "num_output_tokens")
            }
            fail_after = int(noor.get("noor_fail_after", -1)) if _FAULTS else -1

            prompt = await self._prompt(text)
            started = True
            pieces: list[str] = []
            n_input = 0
            n_output = 0
            n_sent = 0
            finish = None
            last_tokens = 0
            async for out in self._engine.generate(prompt, sampling, request_id):
                if sender.is_cancelled():
                    await self._engine.abort(request_id)
                    if self._cancelled_metric is not None:
                        self._cancelled_metric.increment(1)
                    self.logger.log_info(f"[smollm2] request {request_id} cancelled by the client; aborted in vLLM")
                    sender.send(flags=FINAL)
                    return
                if out.prompt_token_ids is not None and not n_input:
                    n_input = len(out.prompt_token_ids)
                completion = out.outputs[0]
                if self._delta is not None:
                    delta_text, delta_tokens = completion.text, len(completion.token_ids)
                else:  # cumulative outputs: take what is new
                    delta_text = completion.text[sum(len(p) for p in pieces) :]
                    delta_tokens = len(completion.token_ids) - last_tokens
                    last_tokens = len(completion.token_ids)
                n_output += delta_tokens
                finish = completion.finish_reason
                if stream:
                    if 0 <= fail_after <= n_sent:
                        await self._engine.abort(request_id)
                        self._send_error(sender, f"injected fault after {n_sent} responses")
                        return
                    sender.send(
                        self._response(delta_text, finish, n_input, delta_tokens, want),
                        flags=FINAL if out.finished else 0,
                    )
                    n_sent += 1
                else:
                    pieces.append(delta_text)
            if not stream:
                body = (text if prepend else "") + "".join(pieces)
                sender.send(self._response(body, finish, n_input, n_output, want), flags=FINAL)
        except Exception as exc:
            self.logger.log_error(f"[smollm2] request {request_id} failed: {traceback.format_exc()}")
            if started:
                await self._engine.abort(request_id)
            self._send_error(sender, f"Error generating stream: {exc}")
        finally:
            self._set_inflight(-1)

    @staticmethod
    def _response(text: str, finish, n_input: int, n_output: int, want: dict):
        tensors = [pb_utils.Tensor("text_output", np.asarray([text.encode("utf-8")], dtype=np.object_))]
        if want["finish_reason"]:
            tensors.append(pb_utils.Tensor("finish_reason", np.asarray([str(finish).encode()], dtype=np.object_)))
        if want["num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.asarray([n_input], dtype=np.uint32)))
        if want["num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.asarray([n_output], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    @staticmethod
    def _send_error(sender, message: str) -> None:
        try:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)
        except Exception:  # the request may already be complete or gone
            pass

    def finalize(self):
        started = time.monotonic()
        self.logger.log_info("[smollm2] shutting down vLLM")
        try:
            self._engine.shutdown()
        except Exception as exc:
            self.logger.log_warn(f"[smollm2] engine shutdown: {exc}")

        async def cancel_pending():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_pending(), self._loop).result(timeout=5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self.logger.log_info(f"[smollm2] finalized in {time.monotonic() - started:.1f} s")
