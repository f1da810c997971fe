"""Link: an attached program; closing it detaches the program.

Attach kinds follow libbpf: tracepoints through perf_event_open on the
tracefs event id plus BPF_LINK_CREATE (BPF_PERF_EVENT), raw tracepoints
through BPF_RAW_TRACEPOINT_OPEN, k/uprobes through their perf PMU.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from typing import Optional

from .errors import ClosedError, Error, NotSupportedError, SyscallError
from .kernel import perf, tracefs
from .kernel import syscall as sc
from .kernel.attrs import LinkCreateAttr, RawTracepointOpenAttr
from .kernel.constants import AttachType, Cmd


class Link:
    """An attachment of a program.  ``close()`` (or leaving the ``with`` block) detaches it.

    ``fd`` is the BPF link fd, or the perf event fd for a perf-event attachment
    made without BPF links (old kernels).
    """

    def __init__(self, program, kind: str, target: str, fds: list):
        self.program = program
        self.kind = kind
        self.target = target
        self._fds = list(fds)

    @property
    def fd(self) -> int:
        if not self._fds:
            raise ClosedError(f"link {self.kind}:{self.target} is closed")
        return self._fds[0]

    @property
    def closed(self) -> bool:
        return not self._fds

    def close(self) -> None:
        """Detach: close the link fd (and the perf event behind it). Idempotent."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fds[0]}"
        return f"<Link {self.program.name} {self.kind}:{self.target} {state}>"


def _attach_perf_event(program, pfd: int, kind: str, target: str) -> Link:
    """Attach ``program`` to the perf event ``pfd`` (taking ownership of ``pfd``)."""
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
        return Link(program, kind, target, [pfd])
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
    pfd = perf.perf_event_open(attr, pid=-1, cpu=0)
    return _attach_perf_event(program, pfd, "tracepoint", target)


def attach_raw_tracepoint(program, target: str) -> Link:
    """Attach to raw tracepoint ``target`` (e.g. ``sys_enter``)."""
    if not target:
        raise Error(f"program {program.name!r}: raw tracepoint needs a name (SEC(\"raw_tp/<name>\"))")
    name = ctypes.create_string_buffer(target.encode())
    attr = RawTracepointOpenAttr(name=ctypes.addressof(name), prog_fd=program.fd)
    try:
        fd = sc.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr)
    except SyscallError as e:
        hint = " (no such raw tracepoint in this kernel)" if e.errno == _errno.ENOENT else ""
        raise type(e)(e.command, e.errno,
                      f"program {program.name!r}: cannot attach to raw tracepoint {target!r}{hint}") from None
    return Link(program, "raw_tracepoint", target, [fd])


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
    pfd = perf.perf_event_open(attr, pid=-1, cpu=0)
    return _attach_perf_event(program, pfd, "kretprobe" if retprobe else "kprobe", target)


def attach_program(program, target: Optional[str] = None) -> Link:
    """Attach ``program`` the way its section says; ``target`` overrides the section's target."""
    spec = program.spec
    kind = spec.sec_def.attach
    target = target if target is not None else spec.attach_target
    if kind == "tracepoint":
        return attach_tracepoint(program, target)
    if kind == "raw_tracepoint":
        return attach_raw_tracepoint(program, target)
    if kind in ("kprobe", "kretprobe"):
        return attach_kprobe(program, target, kind == "kretprobe")
    if kind is None:
        raise Error(f"program {program.name!r} (section {spec.section!r}) cannot be attached automatically: "
                    f"its section names no target; attach it to a device, cgroup or socket yourself, or run it "
                    f"with test_run()")
    raise NotSupportedError(f"program {program.name!r} (section {spec.section!r}): pybpf cannot attach "
                            f"{kind} programs yet")
