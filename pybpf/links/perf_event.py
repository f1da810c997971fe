"""Attachments through perf events: tracepoints and kprobes (perf_event_open, then a
BPF_PERF_EVENT link, or PERF_EVENT_IOC_SET_BPF on kernels before 5.15)."""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..resource import deferred_signals
from ..errors import Error, SyscallError
from ..kernel import perf, tracefs
from ..kernel import syscall as sc
from ..kernel.attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd
from .base import Link


def _perf_link(program, attr, pid: int, cpu: int, kind: str, target: str) -> Link:
    """perf_event_open and the BPF attachment to it in one section: the event fd, then the
    link fd, are owned by the Link from the moment they exist; an interrupt deferred to the
    section's end closes the Link before it propagates."""
    with deferred_signals() as section:
        pfd = perf.perf_event_open(attr, pid=pid, cpu=cpu)
        link = _attach_perf_event(program, pfd, kind, target)
        section.on_interrupt(link)
    return link


def _attach_perf_event(program, pfd: int, kind: str, target: str) -> Link:
    """Attach ``program`` to the perf event ``pfd`` (taking ownership of ``pfd``); called in a section."""
    try:
        try:
            lfd = sc.bpf(Cmd.LINK_CREATE, LinkCreateAttr(prog_fd=program.fd, target_fd=pfd,
                                                         attach_type=AttachType.PERF_EVENT))
            return Link(program, kind, target, [lfd, pfd])
        except SyscallError as e:
            if e.errno not in (_errno.EINVAL, _errno.ENOTSUPP if hasattr(_errno, "ENOTSUPP") else 524):
                raise
        # kernels before 5.15 have no perf-event BPF links
        perf.ioctl(pfd, perf.PERF_EVENT_IOC_SET_BPF, program.fd)
        perf.ioctl(pfd, perf.PERF_EVENT_IOC_ENABLE, 0)
        return Link(program, kind, target, [pfd], bpf_link=False)
    except BaseException:
        os.close(pfd)
        raise


def attach_tracepoint(program, target: str) -> Link:
    """Attach to tracepoint ``category/name`` (e.g. ``syscalls/sys_exit_kill``)."""
    category, sep, name = target.partition("/")
    if not sep or not name:
        raise Error(f"program {program.name!r}: tracepoint target {target!r} is not 'category/name' "
                    f"(e.g. SEC(\"tracepoint/syscalls/sys_enter_getpid\"))")
    tp_id = tracefs.tracepoint_id(category, name)
    attr = perf.PerfEventAttr(type=perf.PERF_TYPE_TRACEPOINT, config=tp_id)
    return _perf_link(program, attr, -1, 0, "tracepoint", target)


def attach_kprobe(program, target: str, retprobe: bool) -> Link:
    """Attach to kernel function ``func[+offset]`` through the kprobe PMU."""
    pmu = tracefs.kprobe_pmu_type()   # NotSupportedError on kernels without kprobes
    func, _, off = target.partition("+")
    if not func:
        raise Error(f"program {program.name!r}: kprobe needs a function name (SEC(\"kprobe/<function>\"))")
    name = ctypes.create_string_buffer(func.encode())
    attr = perf.PerfEventAttr(type=pmu, kprobe_func=ctypes.addressof(name), probe_offset=int(off or "0", 0))
    if retprobe:
        attr.config |= 1 << tracefs.pmu_retprobe_bit("kprobe")
    return _perf_link(program, attr, -1, 0, "kretprobe" if retprobe else "kprobe", target)


