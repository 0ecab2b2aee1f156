"""Which numeric precision a run computes in, and the autocast contexts that give it.

Precisions: fp32 (the CPU's, and a GPU's when asked), bf16 autocast on GPUs with native bf16 (Ampere and
newer), fp16 autocast with loss scaling on older GPUs. `config.resolve_runtime` turns "auto" into one of
them; a checkpoint records the one it was trained in.
"""

import contextlib

import torch


def native_bf16() -> bool:
    """bf16 in hardware (Ampere and newer), not emulated."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no including_emulation and reports hardware support
        return torch.cuda.is_bf16_supported()


def autocast_for(device: torch.device, precision: str):
    """A factory of autocast contexts for a resolved precision: bf16 or fp16 on CUDA, a no-op for fp32."""
    if precision in ("bf16", "fp16") and device.type == "cuda":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def grad_scaler(precision: str):
    """Loss scaling for fp16 (its gradients underflow without it), None otherwise. Its inf check makes the
    CPU wait for the GPU once per step: the one synchronisation fp16 training cannot avoid."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None
