"""What a step costs in memory and compute: a memory model from the config, device peaks, and a
background sampler of GPU (nvitop) and CPU (psutil) utilisation.

The memory model counts fp32 weights, gradients and AdamW's two moments exactly from the model, and
estimates activations from the config: per token and layer, the tensors a transformer block keeps
for backward (about 10 x hidden + 2-3 x FFN width elements; attention scores are not stored because
SDPA recomputes them), for the conv head the input and output of every conv and GELU, and under bf16
autocast the half-precision copy of every weight. With activation checkpointing (``[model.encoder]``/``[model.llm]
activation_checkpointing``) a transformer keeps per layer only its block input (the encoder also its keys and
values, which the query reads use), plus one block's activations while that block's backward runs.
``fovea profile`` also measures the activations (bytes autograd saved for backward) to show beside this estimate.
"""

from __future__ import annotations

import os
import statistics
import threading
from typing import Any

import torch

GB = 1024 ** 3

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, matched by device-name substring.
BF16_PEAK_FLOPS = [
    ("H200", 989e12), ("H100 SXM", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 756e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
]


def bf16_peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in BF16_PEAK_FLOPS if key in device_name), None)


def memory_model(config, model: torch.nn.Module, shards: int = 1) -> dict[str, float]:
    """Estimated training memory in GB of one process, by part, for the configured batch and precision;
    ``shards``: processes that FSDP2 splits weights, gradients and optimizer state over."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    act_bytes = 2 if config.precision.dtype == "bfloat16" else 4
    B, T, S = config.training.batch_size, config.data.num_frames, config.data.frame_size

    from fovea.core.compile import checkpointed_parts

    checkpointed = checkpointed_parts(config)
    enc = getattr(model.encoder, "backbone_config", None)   # optional encoder extension: else not estimated
    encoder = 0
    if enc is not None:
        # DINOv2's config has no registers and an MLP ratio where DINOv3's has intermediate_size
        tokens = B * T * ((S // enc.patch_size) ** 2 + 1 + getattr(enc, "num_register_tokens", 0))
        intermediate = getattr(enc, "intermediate_size", None) or int(enc.hidden_size * enc.mlp_ratio)
        per_layer = 10 * enc.hidden_size + 2 * intermediate
        # checkpointed: each block keeps its input, and a query encoder its keys and values for the reads;
        # one block's activations live again while its backward runs
        encoder = (tokens * (3 * enc.hidden_size * enc.num_hidden_layers + per_layer) if checkpointed["encoder"]
                   else tokens * per_layer * enc.num_hidden_layers)
    llm = model.llm.config
    llm_tokens = 2 * B * (T + 1)                                    # two passes over [mode, z_1..z_T]
    llm_per_layer = 10 * llm.hidden_size + 3 * llm.intermediate_size
    language = (llm_tokens * (llm.hidden_size * llm.num_hidden_layers + llm_per_layer) if checkpointed["llm"]
                else llm_tokens * llm_per_layer * llm.num_hidden_layers)
    latent_side = model.z_vae_init.shape[-1]
    conv_channels = sum(m.out_channels for m in model.head.modules() if isinstance(m, torch.nn.Conv2d))
    head = 2 * (2 * B * T) * 2 * conv_channels * latent_side ** 2   # 2 passes, in+out of each conv/GELU
    # under bf16 autocast each weight is cast once per forward and the copy is kept for backward, but in
    # checkpointed LLM layers (cast again when the layer runs again); the encoder's query reads use its weights
    # outside the checkpointed blocks, so its copies stay
    copied = params - (sum(p.numel() for p in getattr(model.llm, "layers", torch.nn.ModuleList()).parameters())
                       if checkpointed["llm"] else 0)
    weight_copies = copied * act_bytes if config.precision.dtype == "bfloat16" else 0
    activations = (encoder + language + head) * act_bytes + weight_copies

    return {
        "parameters_gb": params * 4 / shards / GB,
        "gradients_gb": trainable * 4 / shards / GB,
        "optimizer_gb": trainable * 8 / shards / GB,                # AdamW: exp_avg and exp_avg_sq, fp32
        "activations_gb": activations / GB,
        "activations_encoder_gb": encoder * act_bytes / GB,
        "activations_llm_gb": language * act_bytes / GB,
        "activations_per_clip_gb": (encoder + language + head) * act_bytes / GB / B,
        "total_gb": ((params * 4 + trainable * 12) / shards + activations) / GB,
    }


class ResourceSampler:
    """Samples GPU utilisation and memory (nvitop; this process's share too) and per-core CPU use
    (psutil) every ``interval`` seconds in a background thread, between ``start`` and ``stop``."""

    def __init__(self, device: torch.device, interval: float = 0.2):
        self.device, self.interval = device, interval
        self.gpus: list = []
        if device.type == "cuda":   # NVML only where torch sees a GPU: elsewhere nvitop would print a fatal error
            try:
                from nvitop import Device

                self.gpus = Device.all()
            except Exception:  # no NVML: the figures say "no GPU" rather than crash
                self.gpus = []
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fovea-resource-sampler")

    def start(self) -> "ResourceSampler":
        import psutil

        psutil.cpu_percent(percpu=True)   # the first call only sets the baseline
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()   # a last sample covers the time since the previous one, however short the run

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        import psutil

        pid = os.getpid()
        sample: dict[str, Any] = {"cpu": psutil.cpu_percent(percpu=True), "gpus": []}
        for gpu in self.gpus:
            processes = gpu.processes()
            mine = processes[pid].gpu_memory() if pid in processes else None
            sample["gpus"].append({"util": gpu.gpu_utilization(), "memory_used": gpu.memory_used(),
                                   "process_memory": mine if isinstance(mine, int) else None})
        self.samples.append(sample)

    def summary(self) -> dict[str, Any]:
        """Means and maxima over the samples: ``gpu`` is None on a machine with no NVIDIA GPU."""
        cpu = list(zip(*(s["cpu"] for s in self.samples))) if self.samples else []
        result: dict[str, Any] = {
            "samples": len(self.samples),
            "cpu_percent_per_core": [round(statistics.mean(core), 1) for core in cpu],
            "cpu_percent_mean": round(statistics.mean(v for core in cpu for v in core), 1) if cpu else None,
            "gpu": None,
        }
        if self.gpus and self.samples:
            devices = []
            for i, gpu in enumerate(self.gpus):
                rows = [s["gpus"][i] for s in self.samples]
                utils = [r["util"] for r in rows if isinstance(r["util"], (int, float))]   # nvitop gives "N/A" strings
                used = [r["memory_used"] for r in rows if isinstance(r["memory_used"], int)]
                mine = [r["process_memory"] for r in rows if r["process_memory"] is not None]
                devices.append({
                    "index": i, "name": gpu.name(),
                    "util_percent_mean": round(statistics.mean(utils), 1) if utils else None,
                    "util_percent_max": max(utils) if utils else None,
                    "memory_used_max_gb": max(used) / GB if used else None,
                    "memory_total_gb": gpu.memory_total() / GB,
                    "process_memory_max_gb": max(mine) / GB if mine else None,
                })
            result["gpu"] = devices
        return result
