"""Where the kernel publishes tracing facts: tracefs (tracepoint ids) and the
dynamic perf PMUs under ``/sys/bus/event_source/devices`` (uprobe, kprobe).
"""

from __future__ import annotations

import ctypes
import os
import re

from .. import errors
from .syscall import libc

_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_DEFAULT_MOUNT_POINT = "/sys/kernel/tracing"
_MOUNT_COMMAND = f"mount -t tracefs nodev {_DEFAULT_MOUNT_POINT}"
_PMU_DIR = "/sys/bus/event_source/devices"

_mount = libc["mount"]
_mount.restype = ctypes.c_int
_mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_void_p)


def _is_tracefs(path: str) -> bool:
    # A mounted tracefs always has an events/ directory; the bare mount point
    # (e.g. an empty /sys/kernel/tracing) does not.
    return os.path.isdir(os.path.join(path, "events"))


def _tracefs_mounts() -> list[str]:
    """Mount points of tracefs listed in /proc/self/mounts."""
    try:
        with open("/proc/self/mounts") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "tracefs":
            # /proc/mounts escapes spaces and such as octal (\040).
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
    return points


def _mount_tracefs() -> str | None:
    """Mounts tracefs at /sys/kernel/tracing; returns why it failed, or None."""
    ctypes.set_errno(0)
    if _mount(b"nodev", _DEFAULT_MOUNT_POINT.encode(), b"tracefs", 0, None) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def tracefs_root() -> str:
    """The directory where tracefs is mounted (``/sys/kernel/tracing`` or
    ``/sys/kernel/debug/tracing``, or wherever /proc/self/mounts says).

    When none is mounted and we are root, mounts tracefs at
    ``/sys/kernel/tracing``.  Raises :class:`pybpf.errors.NotSupportedError`
    if there is still none.
    """
    for path in (*_CANDIDATES, *_tracefs_mounts()):
        if _is_tracefs(path):
            return path
    reason = "not root, so pybpf did not mount it"
    if os.geteuid() == 0:
        failure = _mount_tracefs()
        if failure is None and _is_tracefs(_DEFAULT_MOUNT_POINT):
            return _DEFAULT_MOUNT_POINT
        reason = f"mounting it failed: {failure or 'no events/ directory after mount'}"
    raise errors.NotSupportedError(
        f"tracefs is not mounted (looked in {', '.join(_CANDIDATES)}; {reason}); "
        f"mount it with: {_MOUNT_COMMAND}")


def _read_int(path: str) -> int:
    with open(path) as file:
        return int(file.read().strip())


def tracepoint_id(category: str, name: str) -> int:
    """The perf event id of tracepoint *category*/*name* (e.g. ``"syscalls"``,
    ``"sys_enter_openat"``), the ``config`` of a ``PERF_TYPE_TRACEPOINT`` event.

    Raises :class:`pybpf.errors.Error` when the tracepoint does not exist.
    """
    for part in (category, name):
        if not part or "/" in part or part in (".", ".."):
            raise errors.Error(f"invalid tracepoint name {category!r}/{name!r}")
    root = tracefs_root()
    path = os.path.join(root, "events", category, name, "id")
    try:
        return _read_int(path)
    except FileNotFoundError:
        raise errors.Error(
            f"tracepoint {category}/{name} not found in {root}/events "
            f"(see {root}/available_events)") from None
    except PermissionError as exc:  # the builtin: reading tracefs needs root
        raise errors.PermissionError(f"open {path}", exc.errno, "needs root") from None


def _pmu_type(pmu: str, missing_message: str) -> int:
    path = os.path.join(_PMU_DIR, pmu, "type")
    try:
        return _read_int(path)
    except FileNotFoundError:
        raise errors.NotSupportedError(f"{missing_message}: {path} is missing") from None


def uprobe_pmu_type() -> int:
    """The perf ``type`` of the uprobe PMU (``perf_event_attr.type`` for uprobes)."""
    return _pmu_type("uprobe", "uprobes are not supported by this kernel (CONFIG_UPROBE_EVENTS unset?)")


def kprobe_pmu_type() -> int:
    """The perf ``type`` of the kprobe PMU (``perf_event_attr.type`` for kprobes)."""
    return _pmu_type("kprobe", "kprobes are not supported by this kernel (CONFIG_KPROBES unset?)")


def pmu_retprobe_bit(pmu: str) -> int:
    """The bit of ``config`` that makes a ``"uprobe"``/``"kprobe"`` PMU event a
    return probe (read from ``format/retprobe``, e.g. ``config:0`` -> 0)."""
    path = os.path.join(_PMU_DIR, pmu, "format", "retprobe")
    try:
        with open(path) as file:
            text = file.read().strip()
    except FileNotFoundError:
        raise errors.NotSupportedError(
            f"{pmu} return probes are not supported by this kernel: {path} is missing") from None
    match = re.fullmatch(r"config:(\d+)", text)
    if not match:
        raise errors.Error(f"unexpected format {text!r} in {path}")
    return int(match[1])


__all__ = ["tracefs_root", "tracepoint_id", "uprobe_pmu_type", "kprobe_pmu_type",
           "pmu_retprobe_bit"]
