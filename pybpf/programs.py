"""Program: a loaded BPF program, with test runs and attach."""

from __future__ import annotations

import ctypes
import os

from ._record import Record
from .resource import Resource, deferred_signals
from .errors import ClosedError, Error
from .kernel import syscall as sc
from .kernel.attrs import TestRunAttr
from .kernel.constants import Cmd, ProgType

# program types whose BPF_PROG_TEST_RUN takes only a context: no data, no repeat
# (the kernel's bpf_prog_test_run_syscall / _raw_tp return EINVAL otherwise)
_CTX_ONLY = frozenset({ProgType.SYSCALL, ProgType.RAW_TRACEPOINT, ProgType.TRACING})


class TestRunResult(Record):
    """What BPF_PROG_TEST_RUN returned: ``retval``, ``duration`` (ns per run), the
    output packet ``data`` and the output context ``ctx``."""

    __test__ = False  # not a pytest test class
    _fields = ("retval", "duration", "data", "ctx")

    def __init__(self, retval: int, duration: int, data: bytes, ctx: bytes):
        self.retval = retval
        self.duration = duration
        self.data = data
        self.ctx = ctx


# iterators over a map's elements need the map, given to Program.iterate(map=...)
_MAP_ITERATORS = {"bpf_map_elem", "bpf_sk_storage_map", "sockmap"}


def auto_attachable(spec) -> bool:
    """Whether Object.attach() attaches this program: its section must say where
    (as libbpf's auto-attach, programs such as SEC("uprobe") without a target are skipped)."""
    kind = spec.sec_def.attach
    if kind is None or not spec.autoload:
        return False
    if kind in ("uprobe", "uretprobe", "kprobe", "kretprobe", "tracepoint", "raw_tracepoint", "usdt",
                "kprobe_multi", "uprobe_multi", "ksyscall", "trace", "lsm") and not spec.attach_target:
        return False
    if kind == "iter" and spec.attach_target in _MAP_ITERATORS:
        return False
    return True


class Program(Resource):
    """A BPF program in the kernel: ``name``, ``section``, ``type``, ``fd``."""

    def __init__(self, fd: int, spec, linked=None, owner=None):
        self._fd = fd
        self.spec = spec
        self.name: str = spec.name
        self.section: str = spec.section
        self.type = spec.prog_type
        self.linked = linked
        self._owner = owner

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ClosedError(f"program {self.name!r} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Release the program's fd (links keep the program alive in the kernel). Idempotent."""
        with deferred_signals():       # the fd is taken and closed in one step, never half
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<Program {self.name} section={self.section!r} {self.type.name} {state}>"

    @property
    def auto_attachable(self) -> bool:
        """True if ``attach()`` needs no target: the section says where (``Object.attach()`` attaches these)."""
        return auto_attachable(self.spec)

    @property
    def insn_cnt(self) -> int:
        """Instructions in the loaded program (after linking subprograms)."""
        return self.linked.insn_cnt if self.linked else len(self.spec.insns) // 8

    def test_run(self, ctx: bytes = b"", data: bytes = b"", repeat: int = 1,
                 data_out_size: int | None = None, flags: int = 0, cpu: int = 0) -> TestRunResult:
        """Run the program once (or ``repeat`` times) in the kernel with BPF_PROG_TEST_RUN.

        ``ctx`` is the context (e.g. the argument struct of a SEC("syscall")
        program, which the kernel copies back: see ``result.ctx``); ``data`` the
        packet for networking programs.  Only what the program type accepts is
        sent: syscall, raw_tp and tracing programs take a context alone.
        """
        ctx_in = bytearray(ctx)
        ctx_buf = (ctypes.c_char * max(len(ctx_in), 1)).from_buffer(ctx_in if ctx_in else bytearray(1))
        attr = TestRunAttr(prog_fd=self.fd, flags=flags, cpu=cpu)
        if ctx_in:
            attr.ctx_in = ctypes.addressof(ctx_buf)
            attr.ctx_size_in = len(ctx_in)
        ctx_out = None
        data_out = None
        if self.type in _CTX_ONLY:
            if data:
                raise Error(f"program {self.name!r} ({self.type.name}) takes no data in a test run, only ctx")
        else:
            data_in = bytearray(data)
            self._data_in = (ctypes.c_char * max(len(data_in), 1)).from_buffer(data_in or bytearray(1))
            if data_in:
                attr.data_in = ctypes.addressof(self._data_in)
                attr.data_size_in = len(data_in)
                out_size = data_out_size if data_out_size is not None else len(data_in) + 256
                data_out = ctypes.create_string_buffer(out_size)
                attr.data_out = ctypes.addressof(data_out)
                attr.data_size_out = out_size
            if ctx_in:
                ctx_out = ctypes.create_string_buffer(len(ctx_in))
                attr.ctx_out = ctypes.addressof(ctx_out)
                attr.ctx_size_out = len(ctx_in)
            attr.repeat = repeat
        sc.bpf(Cmd.PROG_TEST_RUN, attr)
        out_data = data_out.raw[:attr.data_size_out] if data_out is not None else b""
        if ctx_out is not None:
            out_ctx = ctx_out.raw[:attr.ctx_size_out]
        else:
            out_ctx = bytes(ctx_in)   # ctx-only types: the kernel copies the context back into ctx_in
        retval = attr.retval
        if retval >= 1 << 31:
            retval -= 1 << 32
        return TestRunResult(retval, attr.duration, out_data, out_ctx)

    def attach(self, target: str | None = None, *, cookie: int | None = None):
        """Attach by the program's section (tracepoint, raw_tp, ...) and return a :class:`~pybpf.Link`.

        ``target`` overrides what the section names (e.g. ``"syscalls/sys_enter_getpid"``);
        ``cookie``: the value ``bpf_get_attach_cookie()`` returns in the program, where the
        attach kind supports cookies.
        """
        from .links import attach_program
        if cookie is None:
            return self._attached(attach_program, self, target)
        return self._attached(lambda: attach_program(self, target, cookie=cookie))

    def _attached(self, attach, *args):
        """``attach(*args)`` and the link registered with the object, as one step: the link
        fd is made and owned inside a section (signals deferred), and if a deferred Ctrl-C
        fires as the section ends, the new link is closed first: an interrupted attach
        leaves nothing attached."""
        with deferred_signals() as section:
            link = attach(*args)
            section.on_interrupt(link)
            if self._owner is not None:
                self._owner._links.append(link)
        return link

    def iterate(self, **options):
        """Attach an iterator program (SEC("iter/<target>")) and return a
        :class:`pybpf.iter.Iterator`: ``read()`` runs it and returns its output,
        ``lines()`` yields the lines.  ``options``: ``map=`` for map iterators,
        ``tid=``/``pid=``/``pid_fd=`` for task iterators, ``cgroup_fd=``/``order=``
        for cgroup iterators."""
        from .iter import attach_iter
        return self._attached(lambda: attach_iter(self, **options))

    def attach_uprobe(self, target: str | None = None, *, pid: int = -1, retprobe: bool | None = None,
                      cookie: int | None = None):
        """Attach a uprobe/uretprobe program to ``"PATH:FUNC[+OFFSET]"`` (default: its section's
        target), in process ``pid`` only (-1: every process); ``cookie`` for
        ``bpf_get_attach_cookie()``."""
        from .links import attach_uprobe
        if retprobe is None:
            retprobe = self.spec.sec_def.attach == "uretprobe"
        target = target if target is not None else self.spec.attach_target
        if cookie is None:
            return self._attached(attach_uprobe, self, target, retprobe, pid)
        return self._attached(lambda: attach_uprobe(self, target, retprobe, pid, cookie=cookie))

    # -- tracing kinds (pybpf.links.perf_event, .uprobe_multi, .kprobe_multi, .usdt) ---------------

    def attach_perf_event(self, pfd: int, *, cookie: int | None = None):
        """Attach to a perf event fd the caller opened (a BPF_PERF_EVENT link, or
        PERF_EVENT_IOC_SET_BPF on old kernels); the link does not take ``pfd`` over."""
        from .links.perf_event import attach_perf_event
        return self._attached(lambda: attach_perf_event(self, pfd, cookie=cookie))

    def attach_sampling(self, frequency: int | None = 99, cpus=None, event: str = "cpu-clock",
                        period: int | None = None):
        """A sampling perf event per online CPU (or per CPU of ``cpus``) running this perf_event
        program: ``frequency`` samples/s, or one per ``period`` events; ``event``: "cpu-clock",
        "task-clock", "cycles" or "instructions" (NotSupportedError without a hardware PMU)."""
        from .links.perf_event import attach_sampling
        return self._attached(attach_sampling, self, frequency, cpus, event, period)

    def attach_uprobe_multi(self, binary: str, pattern: str, pid: int = -1, retprobe: bool = False,
                            cookies=None):
        """BPF_TRACE_UPROBE_MULTI: every function of ``binary`` whose symbol matches the glob
        ``pattern``, with one cookie per match (a list, or a dict symbol -> cookie)."""
        from .links.uprobe_multi import attach_uprobe_multi
        return self._attached(attach_uprobe_multi, self, binary, pattern, pid, retprobe, cookies)

    def attach_kprobe_multi(self, pattern: str, retprobe: bool = False, cookies=None):
        """BPF_TRACE_KPROBE_MULTI over the kernel functions matching ``pattern``
        (NotSupportedError on a kernel without kprobes/fprobe)."""
        from .links.kprobe_multi import attach_kprobe_multi
        return self._attached(attach_kprobe_multi, self, pattern, retprobe, cookies)

    def attach_usdt(self, binary: str, provider: str, name: str, pid: int = -1, cookie: int = 0):
        """Attach to the USDT probe ``provider:name`` of ``binary`` (sys/sdt.h notes): the
        argument specs libbpf's usdt.bpf.h reads are filled in, semaphores counted up while
        attached."""
        from .links.usdt import attach_usdt
        return self._attached(attach_usdt, self, binary, provider, name, pid, cookie)

    def attach_cgroup(self, cgroup, *, flags=None, **options):
        """Attach a cgroup program (cgroup_skb/ingress, cgroup/connect4...) to a cgroup v2
        directory (a path, or an open fd) with a BPF link; with ``flags`` (``"multi"``,
        ``"override"``, ``"none"`` or BPF_F_* bits) through BPF_PROG_ATTACH instead.
        ``options``: ``attach_type``, ``before``, ``after``, ``first``, ``replace``,
        ``expected_revision`` (see :func:`pybpf.links.cgroup.attach_cgroup`)."""
        from .links import attach_cgroup
        return self._attached(lambda: attach_cgroup(self, cgroup, flags=flags, **options))

    # -- networking (pybpf.links.xdp, .tc, .netkit, .socket, .netns, .sockmap, .netfilter) --------

    def attach_xdp(self, iface, mode: str | None = None):
        """Attach an XDP program to ``iface`` (a name or an ifindex) with a BPF_XDP link.
        ``mode``: None (the kernel's choice), ``"generic"`` or ``"native"``."""
        from .links.xdp import attach_xdp
        return self._attached(attach_xdp, self, iface, mode)

    def attach_tc(self, iface, direction: str = "ingress", legacy: bool = False):
        """Attach a tc (SCHED_CLS) program to ``iface`` at ``"ingress"`` or ``"egress"``: a tcx
        link where the kernel has tcx (6.6+), else (or with ``legacy=True``) a clsact qdisc and
        a direct-action cls_bpf filter over netlink; close removes what it added."""
        from .links.tc import attach_tc
        return self._attached(attach_tc, self, iface, direction, legacy)

    def attach_netkit(self, iface, peer: bool = False):
        """Attach to a netkit device (primary side, or its peer with ``peer=True``)."""
        from .links.netkit import attach_netkit
        return self._attached(attach_netkit, self, iface, peer)

    def attach_socket(self, sock):
        """Attach a socket filter to ``sock`` (a socket object or fd) with SO_ATTACH_BPF;
        closing the link detaches it (SO_DETACH_BPF)."""
        from .links.socket import attach_socket
        return self._attached(attach_socket, self, sock)

    def attach_netns(self, netns=None):
        """Attach an sk_lookup or flow_dissector program to a network namespace (a path such
        as ``/run/netns/NAME`` or an fd; default: this process's)."""
        from .links.netns import attach_netns
        return self._attached(attach_netns, self, netns)

    def attach_sockmap(self, map, *, legacy: bool = False):
        """Attach an sk_msg or sk_skb (stream parser/verdict) program to a SOCKMAP or SOCKHASH:
        a sockmap link where the kernel has one (6.10+), else (or ``legacy=True``) BPF_PROG_ATTACH."""
        from .links.sockmap import attach_sockmap
        return self._attached(lambda: attach_sockmap(self, map, legacy=legacy))

    def attach_netfilter(self, pf: str = "ipv4", hook: str = "local_in", priority: int = 0, *,
                         defrag: bool = False):
        """Attach a netfilter program at ``hook`` of protocol family ``pf`` in this process's
        network namespace (a BPF_NETFILTER link); ``defrag``: see reassembled packets (6.6+)."""
        from .links.netfilter import attach_netfilter
        return self._attached(lambda: attach_netfilter(self, pf, hook, priority, defrag=defrag))

    # -- kernel object: pins, id, info, instructions (pybpf.live) -------------------------------

    @classmethod
    def _from_fd(cls, fd: int, pin_path: str | None = None) -> "Program":
        """A Program around program ``fd`` (owned from now on), described by the kernel: its
        name (the 15 characters the kernel keeps), type and translated instructions.  It has
        no section: attach it with an ``attach_*`` method that names the target."""
        try:
            from .live import ProgramInfo, xlated_raw
            from .spec.object import FunctionSpec, ProgramSpec
            from .spec.sections import SectionDef
            info = ProgramInfo.from_fd(fd)
            insns = xlated_raw(fd)[1] if info.xlated_size else b""
            type_name = info.type.name if isinstance(info.type, ProgType) else "UNSPEC"
            spec = ProgramSpec(info.name, "", SectionDef("", type_name, None, 0, None),
                               FunctionSpec(info.name, "", 0, insns))
            prog = cls(fd, spec)
            prog.type = info.type
        except BaseException:
            os.close(fd)
            raise
        prog._pin_path = pin_path
        return prog

    @classmethod
    def from_pinned(cls, path) -> "Program":
        """Open the program pinned at ``path`` (BPF_OBJ_GET): ``info()``, ``xlated()``,
        ``jited()``, ``test_run()``, ``pin()`` and the ``attach_*`` methods work on it."""
        from .live import open_pinned
        path = os.fspath(path)
        with deferred_signals() as section:
            prog = cls._from_fd(open_pinned(path, "program"), path)
            section.on_interrupt(prog)
        return prog

    @classmethod
    def from_id(cls, prog_id: int) -> "Program":
        """Open the program the kernel knows as ``prog_id`` (BPF_PROG_GET_FD_BY_ID: needs
        CAP_SYS_ADMIN)."""
        from .live import open_id
        with deferred_signals() as section:
            prog = cls._from_fd(open_id("program", prog_id))
            section.on_interrupt(prog)
        return prog

    @property
    def id(self) -> int:
        """The program's id in the kernel (what ``bpftool prog list`` shows)."""
        from .kernel.attrs import ProgInfo
        return sc.obj_get_info_by_fd(self.fd, ProgInfo()).id

    def info(self):
        """What the kernel reports about the program: a :class:`pybpf.ProgramInfo` (id, tag,
        map ids, sizes, ``run_cnt``/``run_time_ns`` while :func:`pybpf.stats` is on...)."""
        from .live import ProgramInfo
        return ProgramInfo.from_fd(self.fd)

    def xlated(self, *, linum: bool = False):
        """The instructions as the kernel runs them (after the verifier's rewrites), disassembled
        as ``bpftool prog dump xlated`` prints them, with the C source lines and function
        prototypes when the program was loaded with BTF: a :class:`pybpf.live.Disassembly`, a
        ``str`` whose ``lines`` list the lines and whose ``bytes()`` are the raw instructions.
        ``linum=True`` adds ``[file:F line_num:N line_col:C]`` to the source lines."""
        from .live import xlated
        return xlated(self.fd, linum=linum, what=f"program {self.name!r}")

    def jited(self):
        """The program's JITed machine code: a :class:`pybpf.live.JitedCode` (``bytes``, with each
        function's kernel symbol, address and size in ``functions``)."""
        from .live import jited
        return jited(self.fd, what=f"program {self.name!r}")

    @property
    def pin_path(self) -> str | None:
        """Where :meth:`pin` pinned it (or :meth:`from_pinned` opened it); None otherwise."""
        return getattr(self, "_pin_path", None)

    def pin(self, path) -> None:
        """Pin the program at ``path`` on a bpffs mount (BPF_OBJ_PIN): it stays loaded after this
        process ends, until the pin is removed; the directory is made if missing (as libbpf)."""
        from .live import pin_fd
        with deferred_signals():    # the pin and its record in one step: a Ctrl-C comes after both
            self._pin_path = pin_fd(self.fd, path, f"program {self.name!r}")

    def unpin(self, path=None) -> None:
        """Remove the pin at ``path`` (default: where :meth:`pin` put it)."""
        from .live import unpin_path
        if path is None:
            path = self.pin_path
            if path is None:
                raise Error(f"program {self.name!r} is not pinned from here: give the path to unpin")
        with deferred_signals():    # the unpin and its record in one step
            unpin_path(path, f"program {self.name!r}")
            if self.pin_path is not None and os.path.abspath(os.fspath(path)) == os.path.abspath(self.pin_path):
                self._pin_path = None
