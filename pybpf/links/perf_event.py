"""Attachments through perf events: tracepoints and kprobes (perf_event_open, then a
BPF_PERF_EVENT link, or PERF_EVENT_IOC_SET_BPF on kernels before 5.15), perf events the
caller opened (:func:`attach_perf_event`), sampling profiles (:func:`attach_sampling`)
and ksyscall/kretsyscall probes (:func:`attach_ksyscall`)."""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..resource import deferred_signals
from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import perf, tracefs
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from .base import Link

_ENOTSUPP = 524          # the kernel-internal ENOTSUPP some paths return

_perf_links: list = []   # cached answer of _has_perf_links()


def _has_perf_links(prog_fd: int) -> bool:
    """Whether this kernel has BPF_PERF_EVENT links (Linux 5.15), asked as libbpf does: a
    BPF_LINK_CREATE of attach type BPF_PERF_EVENT with a real program and target fd -1 (a
    kernel with them looks the perf event up and answers EBADF; one without, EINVAL)."""
    if not _perf_links:
        try:
            fd = sc.bpf(Cmd.LINK_CREATE, LinkCreateAttr(prog_fd=prog_fd, target_fd=0xFFFFFFFF,
                                                        attach_type=AttachType.PERF_EVENT))
            os.close(fd)
            found = True
        except SyscallError as e:
            found = e.errno == _errno.EBADF
        _perf_links.append(found)
    return _perf_links[0]


class PerfEventLink(Link):
    """A program attached to perf events.  ``fd`` is the (first) BPF link; the link owns its
    perf event fds too (for :func:`attach_perf_event`, a dup of the caller's fd).

    Without BPF perf links (kernels before 5.15) the program was given to the events with
    PERF_EVENT_IOC_SET_BPF: ``close()`` then disables each event before closing it, since
    a caller's own fd keeps the event (and its program) alive."""

    def __init__(self, program, kind: str, target: str, fds: list, bpf_link: bool = True, cpus=None):
        super().__init__(program, kind, target, fds, bpf_link)
        self.cpus = list(cpus) if cpus is not None else None

    @property
    def perf_fds(self) -> list:
        """The perf event fds the link owns (one per CPU for a sampling link)."""
        return self._fds[1::2] if self._bpf_link else list(self._fds)

    @property
    def link_fds(self) -> list:
        """The BPF link fds (one per perf event); empty without BPF perf links."""
        return self._fds[0::2] if self._bpf_link else []

    def close(self) -> None:
        """Detach from every perf event and close the fds (idempotent)."""
        if not self._bpf_link:
            with deferred_signals():
                for fd in self._fds:
                    try:
                        perf.ioctl(fd, perf.PERF_EVENT_IOC_DISABLE, 0)
                    except Error:
                        pass
        super().close()

    def update(self, program, *, old=None) -> None:
        """Swap in ``program`` on every perf event of the link (BPF_LINK_UPDATE of each BPF link;
        the kernel refuses it for perf links today, EINVAL, as for libbpf)."""
        fds = self.link_fds
        if not fds:
            self._link_fd("BPF_LINK_UPDATE")
        first = self._fds
        try:
            for fd in fds:
                self._fds = [fd]
                super().update(program, old=old)
        finally:
            self._fds = first


def _link_or_ioctl(program, pfd: int, cookie: int | None, what: str) -> int | None:
    """Give ``program`` to perf event ``pfd``: the new BPF link fd, or None when the kernel has
    no perf links and PERF_EVENT_IOC_SET_BPF did it.  ``cookie``: link_create.perf_event.bpf_cookie
    (what bpf_get_attach_cookie() returns)."""
    attr = LinkCreateAttr(prog_fd=program.fd, target_fd=pfd, attach_type=AttachType.PERF_EVENT)
    if cookie is not None:
        attr.perf_event.bpf_cookie = _cookie(cookie)
    try:
        return sc.bpf(Cmd.LINK_CREATE, attr)
    except SyscallError as e:
        if e.errno not in (_errno.EINVAL, _ENOTSUPP) or _has_perf_links(program.fd):
            hint = ""
            if e.errno == _errno.EINVAL:
                hint = (f" (the program type {program.type.name} does not match the event: PERF_EVENT programs "
                        f"for software/hardware events, TRACEPOINT for tracepoints, KPROBE for kprobes and uprobes)")
            elif e.errno == _errno.EEXIST:
                hint = (" (the perf event already has a BPF program, or this program already runs on this "
                        "tracepoint/probe: the kernel keeps a program once per event)")
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to {what}{hint}") from None
    # kernels before 5.15 have no perf-event BPF links, nor cookies
    if cookie is not None:
        raise NotSupportedError(f"program {program.name!r}: BPF cookies on perf events need BPF_PERF_EVENT links, "
                                f"which this kernel lacks (BPF_LINK_CREATE with BPF_PERF_EVENT is refused; "
                                f"Linux 5.15 brought both)")
    perf.ioctl(pfd, perf.PERF_EVENT_IOC_SET_BPF, program.fd)
    perf.ioctl(pfd, perf.PERF_EVENT_IOC_ENABLE, 0)
    return None


def _cookie(value) -> int:
    """A BPF cookie: an integer that fits a u64."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise Error(f"BPF cookie {value!r}: give an integer from 0 to 2**64-1")
    return value


def _perf_link(program, attr, pid: int, cpu: int, kind: str, target: str, cookie: int | None = None) -> Link:
    """perf_event_open and the BPF attachment to it in one section: the event fd, then the
    link fd, are owned by the Link from the moment they exist; an interrupt deferred to the
    section's end closes the Link before it propagates."""
    with deferred_signals() as section:
        pfd = perf.perf_event_open(attr, pid=pid, cpu=cpu)
        link = _attach_perf_event(program, pfd, kind, target, cookie)
        section.on_interrupt(link)
    return link


def _attach_perf_event(program, pfd: int, kind: str, target: str, cookie: int | None = None) -> Link:
    """Attach ``program`` to the perf event ``pfd`` (taking ownership of ``pfd``); called in a section."""
    try:
        lfd = _link_or_ioctl(program, pfd, cookie, f"{kind} {target}")
    except BaseException:
        os.close(pfd)
        raise
    if lfd is None:
        return PerfEventLink(program, kind, target, [pfd], bpf_link=False)
    return PerfEventLink(program, kind, target, [lfd, pfd])


def attach_perf_event(program, pfd: int, cookie: int | None = None) -> Link:
    """Attach ``program`` to a perf event the caller opened (``pfd``, any perf_event_open fd:
    a software or hardware event for a PERF_EVENT program, a tracepoint/kprobe/uprobe event for
    those program types).

    The link holds a dup of ``pfd``: the caller keeps its fd (and closes it when it likes);
    ``close()`` closes the BPF link, which detaches the program (without BPF perf links, before
    5.15, it disables the event: the kernel keeps an ioctl-attached program until the event's
    last fd closes).  The event is enabled (PERF_EVENT_IOC_ENABLE) after attaching, as libbpf
    does.  ``cookie``: what bpf_get_attach_cookie() returns."""
    if isinstance(pfd, bool) or not isinstance(pfd, int) or pfd < 0:
        raise Error(f"program {program.name!r}: attach_perf_event() needs a perf event fd (an int from "
                    f"perf_event_open), not {pfd!r}")
    with deferred_signals() as section:
        try:
            dup = os.dup(pfd)
        except OSError as e:
            raise Error(f"program {program.name!r}: perf event fd {pfd}: {e.strerror}") from None
        try:
            os.set_inheritable(dup, False)
        except OSError:
            pass
        link = _attach_perf_event(program, dup, "perf_event", f"fd {pfd}", cookie)
        section.on_interrupt(link)
        if link._bpf_link:
            try:
                perf.ioctl(dup, perf.PERF_EVENT_IOC_ENABLE, 0)
            except BaseException:
                link.close()
                raise
    return link


# -- sampling (a profile): one perf event per CPU --------------------------------------------------

#: event name -> (perf_event_attr.type, config)
SAMPLING_EVENTS = {
    "cpu-clock": (perf.PERF_TYPE_SOFTWARE, 0),       # PERF_COUNT_SW_CPU_CLOCK
    "task-clock": (perf.PERF_TYPE_SOFTWARE, 1),      # PERF_COUNT_SW_TASK_CLOCK
    "cycles": (perf.PERF_TYPE_HARDWARE, 0),          # PERF_COUNT_HW_CPU_CYCLES
    "instructions": (perf.PERF_TYPE_HARDWARE, 1),    # PERF_COUNT_HW_INSTRUCTIONS
}


def _max_sample_rate() -> int | None:
    try:
        with open("/proc/sys/kernel/perf_event_max_sample_rate") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _sampling_attr(program, frequency, event: str, period) -> perf.PerfEventAttr:
    try:
        ptype, config = SAMPLING_EVENTS[event]
    except (KeyError, TypeError):
        raise Error(f"program {program.name!r}: sampling event {event!r}: use one of "
                    f"{', '.join(map(repr, SAMPLING_EVENTS))}") from None
    attr = perf.PerfEventAttr(type=ptype, config=config)
    if period is not None:
        if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
            raise Error(f"program {program.name!r}: sampling period {period!r}: give a positive number of events "
                        f"(nanoseconds for cpu-clock/task-clock)")
        attr.sample_period = period
    else:
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency <= 0:
            raise Error(f"program {program.name!r}: sampling frequency {frequency!r}: give samples per second "
                        f"(a positive int), or period=")
        attr.freq = 1
        attr.sample_freq = frequency
    return attr


def _cpu_list(program, cpus) -> list:
    from ..kernel.cpus import online_cpus
    online = online_cpus()
    if cpus is None:
        return online
    if isinstance(cpus, int):
        cpus = [cpus]
    chosen = []
    for cpu in cpus:
        if isinstance(cpu, bool) or not isinstance(cpu, int):
            raise Error(f"program {program.name!r}: cpus must be CPU numbers, not {cpu!r}")
        if cpu not in online:
            raise Error(f"program {program.name!r}: CPU {cpu} is not online (online: {online})")
        if cpu not in chosen:
            chosen.append(cpu)
    if not chosen:
        raise Error(f"program {program.name!r}: no CPU to sample on (cpus={cpus!r})")
    return chosen


def _open_sampling_event(program, attr, cpu: int, event: str, frequency, period) -> int:
    try:
        return perf.perf_event_open(attr, pid=-1, cpu=cpu)
    except SyscallError as e:
        if attr.type == perf.PERF_TYPE_HARDWARE and e.errno in (_errno.ENOENT, _errno.EOPNOTSUPP, _errno.ENODEV):
            raise NotSupportedError(f"program {program.name!r}: the {event!r} event needs a hardware PMU (a 'cpu' "
                                    f"PMU in /sys/bus/event_source/devices/), which this machine does not have "
                                    f"(perf_event_open: {_errno.errorcode.get(e.errno, e.errno)}): sample with "
                                    f"event='cpu-clock'") from None
        hint = ""
        if e.errno == _errno.EINVAL and period is None:
            top = _max_sample_rate()
            if top is not None and frequency > top:
                hint = (f" ({frequency} Hz is over kernel.perf_event_max_sample_rate = {top}: sample less often, "
                        f"or raise it with sysctl)")
        raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot open a {event} sampling event on "
                                          f"CPU {cpu}{hint}") from None


def attach_sampling(program, frequency: int | None = 99, cpus=None, event: str = "cpu-clock",
                    period: int | None = None) -> Link:
    """A profile: one sampling perf event per online CPU (or per CPU in ``cpus``), each running
    the PERF_EVENT program ``program`` (SEC("perf_event")) at every sample.

    ``frequency``: samples per second on each CPU (perf_event_attr.freq = 1, sample_freq); or
    ``period``: one sample every ``period`` events (nanoseconds for the clocks), which wins when
    given.  ``event``: "cpu-clock" or "task-clock" (software clocks), "cycles" or "instructions"
    (hardware counters: NotSupportedError on a machine without a hardware PMU, such as most VMs).

    Returns ONE link owning every perf event and BPF link (``cpus`` says which CPUs); ``close()``
    releases them all."""
    if program.type != ProgType.PERF_EVENT:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section {program.section!r}); "
                    f"sampling runs PERF_EVENT programs (SEC(\"perf_event\"))")
    attr = _sampling_attr(program, frequency, event, period)
    chosen = _cpu_list(program, cpus)
    rate = f"period {period}" if period is not None else f"{frequency} Hz"
    target = f"{event} {rate} on CPU{'s' if len(chosen) > 1 else ''} {','.join(map(str, chosen))}"
    with deferred_signals() as section:
        link = PerfEventLink(program, "perf_event", target, [], cpus=chosen)
        section.on_interrupt(link)
        try:
            for cpu in chosen:
                pfd = _open_sampling_event(program, attr, cpu, event, frequency, period)
                link._fds.append(pfd)
                lfd = _link_or_ioctl(program, pfd, None, f"the {event} event of CPU {cpu}")
                if lfd is None:
                    link._bpf_link = False
                else:
                    link._fds.insert(len(link._fds) - 1, lfd)     # [link, event] pairs
        except BaseException:
            link.close()
            raise
    return link


def attach_tracepoint(program, target: str, cookie: int | None = None) -> Link:
    """Attach to tracepoint ``category/name`` (e.g. ``syscalls/sys_exit_kill``); ``cookie``:
    what bpf_get_attach_cookie() returns."""
    category, sep, name = target.partition("/")
    if not sep or not name:
        raise Error(f"program {program.name!r}: tracepoint target {target!r} is not 'category/name' "
                    f"(e.g. SEC(\"tracepoint/syscalls/sys_enter_getpid\"))")
    tp_id = tracefs.tracepoint_id(category, name)
    attr = perf.PerfEventAttr(type=perf.PERF_TYPE_TRACEPOINT, config=tp_id)
    return _perf_link(program, attr, -1, 0, "tracepoint", target, cookie)


def attach_kprobe(program, target: str, retprobe: bool, cookie: int | None = None) -> Link:
    """Attach to kernel function ``func[+offset]`` through the kprobe PMU (NotSupportedError
    on a kernel without kprobes)."""
    pmu = tracefs.kprobe_pmu_type()   # NotSupportedError on kernels without kprobes
    func, _, off = target.partition("+")
    if not func:
        raise Error(f"program {program.name!r}: kprobe needs a function name (SEC(\"kprobe/<function>\"))")
    name = ctypes.create_string_buffer(func.encode())
    attr = perf.PerfEventAttr(type=pmu, kprobe_func=ctypes.addressof(name), probe_offset=int(off or "0", 0))
    if retprobe:
        attr.config |= 1 << tracefs.pmu_retprobe_bit("kprobe")
    return _perf_link(program, attr, -1, 0, "kretprobe" if retprobe else "kprobe", target, cookie)
