"""Devices: choosing one, measuring time and peak memory on it, and a CPU allocator setting."""
import ctypes
import os
import resource
import time
from collections.abc import Callable

import torch

from hardness.cli import UserInputError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count, for benchmark output."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation can still take: free GPU memory, or the kernel's MemAvailable on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def keep_freed_memory_in_heap() -> None:
    """Stop glibc from returning every freed block over 32 MB to the OS.

    Full-batch activations are hundreds of MB; by default each one is mmap'ed afresh and page-faulted
    in every epoch. Serving them from the heap instead makes CPU epochs about 25% faster
    (benchmarks/bench_inversion.py). Does nothing where glibc is absent.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated device memory on CUDA, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def seconds_on_device(device: torch.device, work: Callable[[], object]) -> float:
    """Wall-clock seconds `work()` takes, with the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
