"""``perf_event_open(2)``: the ``perf_event_attr`` layout, the constants pybpf
needs (tracepoints, uprobes, BPF output), the perf ioctls, and the call itself.

Tracepoint and uprobe programs attach to a perf event: open it here, then give
it the program with ``BPF_LINK_CREATE`` (attach type ``BPF_PERF_EVENT``) or with
``PERF_EVENT_IOC_SET_BPF`` + ``PERF_EVENT_IOC_ENABLE``.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
from ctypes import c_int32, c_uint16, c_uint32, c_uint64

from .. import errors
from .syscall import libc, syscall_number

# --- perf_event_attr.type -----------------------------------------------------
PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_TYPE_HW_CACHE = 3
PERF_TYPE_RAW = 4
PERF_TYPE_BREAKPOINT = 5
# Dynamic PMUs (uprobe, kprobe) have their type in
# /sys/bus/event_source/devices/<pmu>/type: see pybpf.kernel.tracefs.

# --- config for PERF_TYPE_SOFTWARE ------------------------------------------
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_BPF_OUTPUT = 10      # the event behind BPF_MAP_TYPE_PERF_EVENT_ARRAY output

# --- sample_type bits -------------------------------------------------------
PERF_SAMPLE_IP = 1 << 0
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_RAW = 1 << 10          # what bpf_perf_event_output() writes

# --- perf_event_open() flags ------------------------------------------------
PERF_FLAG_FD_NO_GROUP = 1 << 0
PERF_FLAG_FD_OUTPUT = 1 << 1
PERF_FLAG_PID_CGROUP = 1 << 2
PERF_FLAG_FD_CLOEXEC = 1 << 3

# --- records in the mmap'ed ring (struct perf_event_header.type) -----------
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PERF_EVENT_HEADER_SIZE = 8         # u32 type, u16 misc, u16 size

# Offsets in the first mmap'ed page (struct perf_event_mmap_page).
PERF_MMAP_PAGE_DATA_HEAD = 1024
PERF_MMAP_PAGE_DATA_TAIL = 1032
PERF_MMAP_PAGE_DATA_OFFSET = 1040
PERF_MMAP_PAGE_DATA_SIZE = 1048

# --- ioctl numbers ----------------------------------------------------------
# The generic Linux _IOC encoding, used by x86_64 and arm64:
# dir (2 bits) << 30 | size (14 bits) << 16 | type (8 bits) << 8 | nr (8 bits).
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: str, nr: int, size: int) -> int:  # noqa: N802 - C macro name
    return (direction << 30) | (size << 16) | (ord(type_) << 8) | nr


def _IO(type_: str, nr: int) -> int:  # noqa: N802
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOW(type_: str, nr: int, size: int) -> int:  # noqa: N802
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOR(type_: str, nr: int, size: int) -> int:  # noqa: N802
    return _IOC(_IOC_READ, type_, nr, size)


PERF_EVENT_IOC_ENABLE = _IO("$", 0)
PERF_EVENT_IOC_DISABLE = _IO("$", 1)
PERF_EVENT_IOC_RESET = _IO("$", 3)
PERF_EVENT_IOC_ID = _IOR("$", 7, ctypes.sizeof(ctypes.c_void_p))     # __u64 * in the UAPI
PERF_EVENT_IOC_SET_BPF = _IOW("$", 8, ctypes.sizeof(c_uint32))
PERF_EVENT_IOC_PAUSE_OUTPUT = _IOW("$", 9, ctypes.sizeof(c_uint32))

_IOCTL_NAMES = {
    PERF_EVENT_IOC_ENABLE: "PERF_EVENT_IOC_ENABLE",
    PERF_EVENT_IOC_DISABLE: "PERF_EVENT_IOC_DISABLE",
    PERF_EVENT_IOC_RESET: "PERF_EVENT_IOC_RESET",
    PERF_EVENT_IOC_ID: "PERF_EVENT_IOC_ID",
    PERF_EVENT_IOC_SET_BPF: "PERF_EVENT_IOC_SET_BPF",
    PERF_EVENT_IOC_PAUSE_OUTPUT: "PERF_EVENT_IOC_PAUSE_OUTPUT",
}

# --- the bitfield word of perf_event_attr (after read_format) ---------------
#: name -> (first bit, width) in :attr:`PerfEventAttr.flags`.
FLAG_BITS: dict[str, tuple[int, int]] = {
    "disabled": (0, 1),
    "inherit": (1, 1),
    "pinned": (2, 1),
    "exclusive": (3, 1),
    "exclude_user": (4, 1),
    "exclude_kernel": (5, 1),
    "exclude_hv": (6, 1),
    "exclude_idle": (7, 1),
    "mmap": (8, 1),
    "comm": (9, 1),
    "freq": (10, 1),
    "inherit_stat": (11, 1),
    "enable_on_exec": (12, 1),
    "task": (13, 1),
    "watermark": (14, 1),
    "precise_ip": (15, 2),
    "mmap_data": (17, 1),
    "sample_id_all": (18, 1),
    "exclude_host": (19, 1),
    "exclude_guest": (20, 1),
    "exclude_callchain_kernel": (21, 1),
    "exclude_callchain_user": (22, 1),
    "mmap2": (23, 1),
    "comm_exec": (24, 1),
    "use_clockid": (25, 1),
    "context_switch": (26, 1),
    "write_backward": (27, 1),
    "namespaces": (28, 1),
    "ksymbol": (29, 1),
    "bpf_event": (30, 1),
    "aux_output": (31, 1),
    "cgroup": (32, 1),
    "text_poke": (33, 1),
    "build_id": (34, 1),
    "inherit_thread": (35, 1),
    "remove_on_exec": (36, 1),
    "sigtrap": (37, 1),
}

# One-bit masks of the flags word, e.g. ``attr.flags = PERF_ATTR_DISABLED``.
PERF_ATTR_DISABLED = 1 << FLAG_BITS["disabled"][0]
PERF_ATTR_INHERIT = 1 << FLAG_BITS["inherit"][0]
PERF_ATTR_EXCLUDE_USER = 1 << FLAG_BITS["exclude_user"][0]
PERF_ATTR_EXCLUDE_KERNEL = 1 << FLAG_BITS["exclude_kernel"][0]
PERF_ATTR_FREQ = 1 << FLAG_BITS["freq"][0]
PERF_ATTR_WATERMARK = 1 << FLAG_BITS["watermark"][0]
PERF_ATTR_SAMPLE_ID_ALL = 1 << FLAG_BITS["sample_id_all"][0]
PERF_ATTR_WRITE_BACKWARD = 1 << FLAG_BITS["write_backward"][0]


def _union(name, *names, ctype=c_uint64):
    return type(name, (ctypes.Union,), {"_fields_": [(n, ctype) for n in names]})


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` (136 bytes, ``PERF_ATTR_SIZE_VER8``).

    ``size`` is set to ``sizeof(PerfEventAttr)`` unless given.  The C bitfields
    (``disabled``, ``inherit``, ... ``sigtrap``) live in the one u64 ``flags``;
    each also is a property of the same name (``attr.disabled = 1``).
    Union members are all available by their UAPI names (``sample_freq`` is
    ``sample_period``, ``uprobe_path`` and ``kprobe_func`` are ``config1``,
    ``probe_offset`` is ``config2``...).
    """

    _anonymous_ = ("_period", "_wakeup", "_config1", "_config2")
    _fields_ = [
        ("type", c_uint32),
        ("size", c_uint32),
        ("config", c_uint64),
        ("_period", _union("_SamplePeriod", "sample_period", "sample_freq")),
        ("sample_type", c_uint64),
        ("read_format", c_uint64),
        ("flags", c_uint64),
        ("_wakeup", _union("_Wakeup", "wakeup_events", "wakeup_watermark", ctype=c_uint32)),
        ("bp_type", c_uint32),
        ("_config1", _union("_Config1", "bp_addr", "kprobe_func", "uprobe_path", "config1")),
        ("_config2", _union("_Config2", "bp_len", "kprobe_addr", "probe_offset", "config2")),
        ("branch_sample_type", c_uint64),
        ("sample_regs_user", c_uint64),
        ("sample_stack_user", c_uint32),
        ("clockid", c_int32),
        ("sample_regs_intr", c_uint64),
        ("aux_watermark", c_uint32),
        ("sample_max_stack", c_uint16),
        ("_reserved_2", c_uint16),
        ("aux_sample_size", c_uint32),
        ("aux_action", c_uint32),       # was __reserved_3 before 6.13
        ("sig_data", c_uint64),
        ("config3", c_uint64),
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.size:
            self.size = ctypes.sizeof(self)


def _flag_property(name: str, bit: int, width: int) -> property:
    mask = ((1 << width) - 1) << bit

    def get(self) -> int:
        return (self.flags & mask) >> bit

    def set_(self, value: int) -> None:
        self.flags = (self.flags & ~mask) | ((int(value) << bit) & mask)

    return property(get, set_, doc=f"bit {bit} of ``flags`` (the C bitfield ``{name}``)")


for _name, (_bit, _width) in FLAG_BITS.items():
    setattr(PerfEventAttr, _name, _flag_property(_name, _bit, _width))
del _name, _bit, _width


# --- system calls -------------------------------------------------------------

_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "arm64": 241}

_perf_event_open = libc["syscall"]   # a separate function object: own argtypes
_perf_event_open.restype = ctypes.c_long
_perf_event_open.argtypes = (ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_ulong)


def _open_hint(err: int, attr: PerfEventAttr) -> str | None:
    if err in (_errno.EACCES, _errno.EPERM):
        return ("needs root or CAP_PERFMON (see /proc/sys/kernel/perf_event_paranoid)"
                if os.geteuid() != 0 else "refused even for root (lockdown or LSM policy?)")
    if attr.type == PERF_TYPE_TRACEPOINT and err in (_errno.ENOENT, _errno.ENODEV, _errno.EINVAL):
        # the kernel answers EINVAL for a tracepoint id it does not know
        return f"no tracepoint with id {attr.config}, or an invalid perf_event_attr"
    if err in (_errno.ENOENT, _errno.ENODEV):
        return f"no such event (type={attr.type}, config={attr.config})"
    if err == _errno.E2BIG:
        return f"perf_event_attr.size={attr.size} is larger than this kernel supports"
    if err == _errno.EINVAL:
        return f"invalid perf_event_attr (type={attr.type}, config={attr.config}) or cpu/pid"
    if err == _errno.EMFILE:
        return "too many open files"
    return None


def perf_event_open(attr: PerfEventAttr, pid: int = -1, cpu: int = 0, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    """Opens a perf event and returns its fd (the caller closes it).

    ``pid=-1, cpu=0`` (the default) means every process on CPU 0.  That is all a
    tracepoint or probe needs: a BPF program attached to such an event runs on
    every CPU (the kernel hangs it on the tracepoint, not on the event).  A BPF
    output event for a perf buffer needs one event per CPU instead.  Raises
    :class:`pybpf.errors.SyscallError` with ``command == "perf_event_open"``.
    """
    nr = syscall_number(_NR_PERF_EVENT_OPEN, "perf_event_open")
    while True:
        ctypes.set_errno(0)
        fd = _perf_event_open(nr, ctypes.addressof(attr), pid, cpu, group_fd, flags)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != _errno.EINTR:
            break
    cls = errors.PermissionError if err in (_errno.EACCES, _errno.EPERM) else errors.SyscallError
    raise cls("perf_event_open", err, _open_hint(err, attr))


def ioctl(fd: int, request: int, arg: int = 0) -> int:
    """``ioctl(fd, request, arg)`` with an integer argument (a program fd for
    ``PERF_EVENT_IOC_SET_BPF``, 0 for ``PERF_EVENT_IOC_ENABLE``).

    Raises :class:`pybpf.errors.SyscallError` named like
    ``"ioctl(PERF_EVENT_IOC_SET_BPF)"``.
    """
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        name = f"ioctl({_IOCTL_NAMES.get(request, hex(request))})"
        hint = None
        if request == PERF_EVENT_IOC_SET_BPF and exc.errno == _errno.EINVAL:
            hint = "the program type does not match the perf event (tracepoint/kprobe/uprobe/perf_event)"
        elif request == PERF_EVENT_IOC_SET_BPF and exc.errno == _errno.EEXIST:
            hint = "a BPF program is already attached to this perf event"
        cls = errors.PermissionError if exc.errno in (_errno.EACCES, _errno.EPERM) else errors.SyscallError
        raise cls(name, exc.errno, hint) from None


__all__ = [name for name in dir() if name.startswith("PERF_")] + [
    "FLAG_BITS", "PerfEventAttr", "perf_event_open", "ioctl",
]
