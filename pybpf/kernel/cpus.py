"""The machine's CPUs as the kernel lists them in /sys/devices/system/cpu.

Per-CPU map values hold one slot per *possible* CPU (kernel/bpf/syscall.c
bpf_map_value_size: round_up(value_size, 8) * num_possible_cpus()); perf
buffers open one event per *online* CPU.
"""

from __future__ import annotations

import os


def _cpu_list(name: str) -> list[int] | None:
    """The CPUs of /sys/devices/system/cpu/<name> ("0-3,8"), or None if it cannot be read."""
    try:
        with open(f"/sys/devices/system/cpu/{name}") as f:
            text = f.read().strip()
    except OSError:
        return None
    cpus = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


_possible: list[int] = []     # read once: the possible CPUs are fixed at boot (cpu_possible_mask)


def possible_cpus() -> int:
    """Number of possible CPUs: one past the highest possible CPU's number."""
    if not _possible:
        cpus = _cpu_list("possible")
        _possible.append(max(cpus) + 1 if cpus else os.cpu_count() or 1)
    return _possible[0]


def online_cpus() -> list[int]:
    """The CPUs online now."""
    cpus = _cpu_list("online")
    return cpus if cpus is not None else list(range(os.cpu_count() or 1))
