"""Link: an attached program; closing it detaches the program.

Attach kinds follow libbpf: tracepoints through perf_event_open on the
tracefs event id plus BPF_LINK_CREATE (BPF_PERF_EVENT), raw tracepoints
through BPF_RAW_TRACEPOINT_OPEN, k/uprobes through their perf PMU,
tp_btf/fentry/fexit/fmod_ret/lsm through BPF_LINK_CREATE on their
attach_btf_id, iterators in :mod:`pybpf.iter`, cgroup programs through
BPF_LINK_CREATE on a cgroup directory.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from .resource import Resource, deferred_signals
from .errors import ClosedError, Error, NotSupportedError, SyscallError
from .kernel import perf, tracefs
from .kernel import syscall as sc
from .kernel.attrs import LinkCreateAttr, RawTracepointOpenAttr
from .kernel.constants import AttachType, Cmd


class Link(Resource):
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
        """Detach: close the link fd (and the perf event behind it). Idempotent.

        Signals are deferred meanwhile (closing a perf event waits for the kernel,
        so a Ctrl-C very often lands here): each fd is taken from the link and
        closed as one step, and every fd is closed even if one close fails."""
        first = None
        with deferred_signals():
            while self._fds:
                fd = self._fds.pop(0)
                try:
                    os.close(fd)
                except OSError as e:   # close(2) frees the fd even when it reports an error
                    first = first or e
        if first is not None:
            raise first

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fds[0]}"
        return f"<Link {self.program.name} {self.kind}:{self.target} {state}>"


def _perf_link(program, attr, pid: int, cpu: int, kind: str, target: str) -> Link:
    """perf_event_open and the BPF attachment to it in one section: the event fd, then the
    link fd, are owned by the Link from the moment they exist; an interrupt deferred to the
    section's end closes the Link before it propagates."""
    with deferred_signals() as section:
        pfd = perf.perf_event_open(attr, pid=pid, cpu=cpu)
        link = _attach_perf_event(program, pfd, kind, target)
        section.on_interrupt(link)
    return link


def _fd_link(program, kind: str, target: str, make) -> Link:
    """A Link around the one fd ``make()`` returns, made in a section (see :func:`_perf_link`)."""
    with deferred_signals() as section:
        link = Link(program, kind, target, [make()])
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
    return _perf_link(program, attr, -1, 0, "tracepoint", target)


def attach_raw_tracepoint(program, target: str) -> Link:
    """Attach to raw tracepoint ``target`` (e.g. ``sys_enter``)."""
    if not target:
        raise Error(f"program {program.name!r}: raw tracepoint needs a name (SEC(\"raw_tp/<name>\"))")
    name = ctypes.create_string_buffer(target.encode())
    attr = RawTracepointOpenAttr(name=ctypes.addressof(name), prog_fd=program.fd)

    def make() -> int:
        try:
            return sc.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr)
        except SyscallError as e:
            hint = " (no such raw tracepoint in this kernel)" if e.errno == _errno.ENOENT else ""
            raise type(e)(e.command, e.errno,
                          f"program {program.name!r}: cannot attach to raw tracepoint {target!r}{hint}") from None
    return _fd_link(program, "raw_tracepoint", target, make)


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


def attach_trace(program, target: str | None = None) -> Link:
    """Attach a tp_btf, fentry, fexit, fmod_ret or lsm program to what it was loaded for
    (its attach_btf_id): BPF_LINK_CREATE with its expected attach type, or
    BPF_RAW_TRACEPOINT_OPEN without a name on kernels before BPF links for tracing (5.8)."""
    spec = program.spec
    if target and target != spec.attach_target:
        raise Error(f"program {program.name!r} was loaded for {spec.attach_target!r} (its attach_btf_id is "
                    f"fixed at load); to attach it to {target!r} set spec.programs[{program.name!r}].attach_target "
                    f"before loading")
    attach_type = spec.expected_attach_type

    def make() -> int:
        try:
            return sc.bpf(Cmd.LINK_CREATE, LinkCreateAttr(prog_fd=program.fd, target_fd=0,
                                                          attach_type=attach_type))
        except SyscallError as e:
            if e.errno != _errno.EINVAL:
                raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to "
                                                  f"{spec.attach_target!r}") from None
            attr = RawTracepointOpenAttr(name=0, prog_fd=program.fd)
            try:
                return sc.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr)
            except SyscallError:
                raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to "
                                                  f"{spec.attach_target!r}") from None
    return _fd_link(program, spec.sec_def.attach, spec.attach_target, make)


# -- uprobes --------------------------------------------------------------------------------------

_LIB_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
             "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")


def resolve_binary(path: str) -> str:
    """libbpf's resolve_full_path: a path with a '/' as it is; a name containing '.so'
    through LD_LIBRARY_PATH and the library directories; other names through PATH."""
    if "/" in path:
        if not os.path.exists(path):
            raise Error(f"uprobe binary {path!r} does not exist")
        return path
    if ".so" in path:
        dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(_LIB_DIRS)
    else:
        dirs = [d for d in os.environ.get("PATH", "").split(":") if d]
    for d in dirs:
        full = os.path.join(d, path)
        if os.path.isfile(full):
            return os.path.abspath(full)
    raise Error(f"uprobe binary {path!r} not found in {'the library directories' if '.so' in path else 'PATH'}")


def _elf_symbol_vaddr(elf, func: str, path: str) -> int:
    """The address of function ``func`` in the ELF's .symtab or .dynsym (libbpf elf_find_func_offset:
    ``name`` also matches versioned ``name@VER``/``name@@VER``; one non-weak definition wins over weak ones)."""
    from elftools.elf.sections import SymbolTableSection
    found = None   # (vaddr, bind)
    for sec_name in (".symtab", ".dynsym"):
        sec = elf.get_section_by_name(sec_name)
        if not isinstance(sec, SymbolTableSection):
            continue
        for sym in sec.iter_symbols():
            name = sym.name
            if not name.startswith(func) or (len(name) > len(func) and name[len(func)] != "@"):
                continue
            if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC", "STT_LOOS") or not sym["st_value"] \
                    or sym["st_shndx"] == "SHN_UNDEF":
                continue
            bind = sym["st_info"]["bind"]
            if found is not None and found[0] != sym["st_value"]:
                if found[1] != "STB_WEAK" and bind != "STB_WEAK":
                    raise Error(f"function {func!r} in {path} is ambiguous: several definitions at "
                                f"0x{found[0]:x} and 0x{sym['st_value']:x}")
                if bind == "STB_WEAK":
                    continue
            found = (sym["st_value"], bind)
        if found is not None:
            break
    if found is None:
        raise Error(f"no function {func!r} in {path} (neither .symtab nor .dynsym defines it)")
    return found[0]


def uprobe_file_offset(path: str, func: str) -> int:
    """The file offset of function ``func`` in the ELF file ``path``: its symbol's address
    mapped through the PT_LOAD program header that contains it (what the uprobe PMU's
    config2 wants)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            vaddr = _elf_symbol_vaddr(elf, func, path)
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                if seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_memsz"]:
                    return vaddr - seg["p_vaddr"] + seg["p_offset"]
    except OSError as e:
        raise Error(f"cannot read uprobe binary {path}: {e.strerror}") from None
    except ELFError as e:
        raise Error(f"uprobe binary {path} is not a valid ELF file: {e}") from None
    raise Error(f"function {func!r} in {path} is at 0x{vaddr:x}, outside every PT_LOAD segment")


def parse_uprobe_target(target: str) -> tuple[str, str, int]:
    """``PATH:FUNC[+OFFSET]`` (libbpf's uprobe section format) -> (path, func, offset).
    FUNC may also be a number: a file offset in PATH."""
    path, sep, rest = target.rpartition(":")
    if not sep or not path or not rest:
        raise Error(f"uprobe target {target!r} is not 'PATH:FUNCTION[+OFFSET]' "
                    f"(e.g. SEC(\"uprobe//usr/lib/x86_64-linux-gnu/libc.so.6:getpid\"))")
    func, _, off = rest.partition("+")
    try:
        offset = int(off, 0) if off else 0
    except ValueError:
        raise Error(f"uprobe target {target!r}: offset {off!r} is not a number") from None
    return path, func, offset


def attach_uprobe(program, target: str, retprobe: bool, pid: int = -1) -> Link:
    """Attach to ``PATH:FUNC[+OFFSET]`` in user space through the uprobe PMU
    (config1 = path, config2 = file offset).  ``pid`` -1 probes every process."""
    if not target:
        raise Error(f"program {program.name!r} (section {program.section!r}) names no function to probe: "
                    f"attach it with target=\"/path/to/binary:function\"")
    path, func, offset = parse_uprobe_target(target)
    if retprobe and offset:
        raise Error(f"program {program.name!r}: uretprobes take no offset ({target!r})")
    path = resolve_binary(path)
    try:
        file_offset = int(func, 0)
    except ValueError:
        file_offset = uprobe_file_offset(path, func)
    pmu = tracefs.uprobe_pmu_type()
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = perf.PerfEventAttr(type=pmu, uprobe_path=ctypes.addressof(name), probe_offset=file_offset + offset)
    if retprobe:
        attr.config |= 1 << tracefs.pmu_retprobe_bit("uprobe")
    return _perf_link(program, attr, pid, 0 if pid == -1 else -1, "uretprobe" if retprobe else "uprobe", target)


# -- cgroups ----------------------------------------------------------------------------------------

def attach_cgroup(program, cgroup) -> Link:
    """Attach a cgroup program (cgroup_skb/ingress, cgroup/connect4...) to ``cgroup`` (a cgroup v2
    directory or an open fd of one) with a BPF link of the program's expected attach type."""
    attach_type = program.spec.expected_attach_type
    if attach_type is None:
        raise Error(f"program {program.name!r} (section {program.section!r}) has no attach type: use a "
                    f"section such as cgroup_skb/ingress or cgroup_skb/egress")
    own = not isinstance(cgroup, int)

    def make() -> int:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY) if own else cgroup
        try:
            return sc.bpf(Cmd.LINK_CREATE, LinkCreateAttr(prog_fd=program.fd, target_fd=fd,
                                                          attach_type=attach_type))
        except SyscallError as e:
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to cgroup {cgroup!r} "
                                              f"as {AttachType(attach_type).name}") from None
        finally:
            if own:
                os.close(fd)
    return _fd_link(program, "cgroup", str(cgroup), make)


def attach_program(program, target: str | None = None) -> Link:
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
    if kind in ("uprobe", "uretprobe"):
        return attach_uprobe(program, target, kind == "uretprobe")
    if kind in ("trace", "lsm"):
        return attach_trace(program, target)
    if kind == "iter":
        from .iter import attach_iter
        return attach_iter(program, target)
    if kind is None:
        raise Error(f"program {program.name!r} (section {spec.section!r}) cannot be attached automatically: "
                    f"its section names no target; attach it to a device, cgroup or socket yourself, or run it "
                    f"with test_run()")
    raise NotSupportedError(f"program {program.name!r} (section {spec.section!r}): pybpf cannot attach "
                            f"{kind} programs yet")
