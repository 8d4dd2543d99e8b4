"""Where and how computation runs: device, precision, distributed process group, peak FLOP/s."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .config import ConfigError
from .io import atomic_write_text


def pick_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda if available, then mps, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); else bf16 is emulated and slow.
    GPTRECIPE_CPU_BF16=0 (or 1) overrides the detection: `dtype=auto` then takes the path of a CPU without (with)
    native bf16 everywhere, e.g. to reproduce fp32 results or time that path on a bf16 machine."""
    forced = os.environ.get("GPTRECIPE_CPU_BF16", "auto")
    if forced in ("0", "1"):
        return forced == "1"
    if forced != "auto":
        raise ConfigError(f"GPTRECIPE_CPU_BF16={forced!r}: expected auto, 0 or 1")
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str, device: torch.device, key: str = "train.dtype") -> torch.dtype:
    """Compute dtype (autocast in training, the weights' in inference). `auto` takes bf16 only where the hardware
    makes it faster; `key` names the setting in the error."""
    if name == "auto":
        fast = ((device.type == "cuda" and torch.cuda.is_bf16_supported())
                or (device.type == "cpu" and cpu_has_fast_bf16()))
        return torch.bfloat16 if fast else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"{key}: unknown {name!r}; use auto, fp32, bf16 or fp16")
    return table[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context: matmuls in `dtype`, reductions in fp32. A no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world), device


@contextlib.contextmanager
def rank_zero_first(info: DistInfo):
    """Run the body on rank 0 first (e.g. tokenizing into a shared cache), then on the other ranks."""
    if info.enabled and not info.is_main:
        dist.barrier()
    yield
    if info.enabled and info.is_main:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    """The elementwise sum of `t` over all ranks (a CPU tensor back; `t` itself when not distributed)."""
    if not info.enabled:
        return t
    t = t.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def _cpu_name() -> str:
    """CPU model and core count, so a cached peak is never reused on another kind of machine."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    info: dict[str, str] = {}
    for ln in lines:  # the first core's fields; "model name" alone is "AMD EPYC" for Zen 3 and Zen 5 alike
        key, _, value = ln.partition(":")
        info.setdefault(key.strip(), value.strip())
    return f"{info.get('model name', 'cpu')} family {info.get('cpu family', '?')} model {info.get('model', '?')} " \
           f"x{os.cpu_count()}"


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 0, seconds: float = 1.0) -> float:
    """Measured peak matmul FLOP/s of this device in `dtype` (the denominator of MFU); cached on disk."""
    key = f"{device.type}:{torch.cuda.get_device_name(device) if device.type == 'cuda' else _cpu_name()}:{dtype}"
    key += f":threads={torch.get_num_threads()}"
    cache = Path(os.environ.get("GPTRECIPE_CACHE", Path.home() / ".cache" / "gptrecipe")) / "peak_flops.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best, deadline = 0.0, time.perf_counter() + seconds
    for _ in range(2):  # warm up
        a @ b
    while True:
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
        if time.perf_counter() > deadline:
            break
    known[key] = best
    with contextlib.suppress(OSError):
        atomic_write_text(cache, json.dumps(known, indent=1))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
