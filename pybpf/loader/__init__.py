"""Layer 3: from an ObjectSpec to kernel objects.

``load_spec`` loads the object's BTF, creates its maps (filling and freezing
internal ones), links and relocates each program and loads it.  If anything
fails, every fd created so far is closed before the exception propagates: no
half-loaded object stays in the kernel.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
import re
from typing import Optional

from ..errors import BTFError, Error, NotSupportedError, ObjectError, SyscallError, VerifierError
from ..kernel import syscall as sc
from ..kernel.attrs import BtfLoadAttr, MapCreateAttr, ProgLoadAttr
from ..kernel.constants import Cmd, MapType, ProgType
from ..spec import sections as S
from ..spec.object import MapSpec, ObjectSpec, ProgramSpec
from .relocate import LinkedProgram, link_program

PAGE_SIZE = mmap.PAGESIZE

# verifier log: start at 256 KiB (libbpf's default is similar), grow up to 1 GiB on ENOSPC
_LOG_START = 256 * 1024
_LOG_MAX = 1 << 30


def possible_cpus() -> int:
    """Number of possible CPUs (per-CPU map values hold one slot per possible CPU)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


def _ringbuf_size(size: int) -> int:
    """libbpf's adjust_ringbuf_sz: round up to page_size * 2^k (the kernel requires a
    power-of-two multiple of the page size)."""
    n = PAGE_SIZE
    while n < size:
        n <<= 1
    return n


def _kernel_name(name: str) -> bytes:
    """A name the kernel accepts (BPF_OBJ_NAME_LEN-1 chars of [A-Za-z0-9_.])."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)[:15].encode()


def load_btf(raw: bytes) -> int:
    """BPF_BTF_LOAD; on failure reload with a log and raise BTFError carrying the kernel's words."""
    buf = ctypes.create_string_buffer(raw, len(raw))
    attr = BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(raw))
    try:
        return sc.bpf(Cmd.BTF_LOAD, attr)
    except SyscallError as first:
        if first.errno in (_errno.EPERM, _errno.EACCES):
            raise
        log = ctypes.create_string_buffer(1 << 20)
        attr = BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(raw), btf_log_buf=ctypes.addressof(log),
                           btf_log_size=len(log), btf_log_level=1)
        try:
            fd = sc.bpf(Cmd.BTF_LOAD, attr)
        except SyscallError:
            text = log.value.decode(errors="replace").strip()
            last = text.splitlines()[-1] if text else str(first)
            # the log dumps every type checked so far (can be megabytes): the message
            # keeps its last line, the exception's .log the whole of it
            err = BTFError(f"the kernel rejected the object's BTF: {last}"
                           + ("\n(the whole log is in the exception's .log)" if text else ""))
            err.log = text
            raise err from None
        return fd  # passed with a log: keep it


def create_map(spec: MapSpec, btf_fd: int = -1, inner_fd: int = -1) -> int:
    """BPF_MAP_CREATE for one MapSpec; returns the fd. BTF key/value types are passed when
    known, and dropped on a retry if the kernel refuses them (as libbpf does)."""
    max_entries = spec.max_entries
    key_size, value_size = spec.key_size, spec.value_size
    if spec.type in (MapType.RINGBUF, MapType.USER_RINGBUF):
        max_entries = _ringbuf_size(max_entries)
    elif spec.type == MapType.PERF_EVENT_ARRAY:
        key_size, value_size = key_size or 4, value_size or 4
        max_entries = max_entries or possible_cpus()

    def attr(with_btf: bool) -> MapCreateAttr:
        a = MapCreateAttr(map_type=spec.type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=spec.flags, numa_node=spec.numa_node,
                          map_extra=spec.map_extra, map_name=_kernel_name(spec.name))
        if inner_fd >= 0:
            a.inner_map_fd = inner_fd
        if with_btf and btf_fd >= 0 and (spec.key_type_id or spec.value_type_id):
            a.btf_fd = btf_fd
            a.btf_key_type_id = spec.key_type_id
            a.btf_value_type_id = spec.value_type_id
        return a

    try:
        return sc.bpf(Cmd.MAP_CREATE, attr(True))
    except SyscallError as e:
        if e.errno in (_errno.EPERM, _errno.EACCES) or btf_fd < 0 or not (spec.key_type_id or spec.value_type_id):
            raise _map_error(spec, max_entries, e) from None
    try:
        return sc.bpf(Cmd.MAP_CREATE, attr(False))
    except SyscallError as e:
        raise _map_error(spec, max_entries, e) from None


def _map_error(spec: MapSpec, max_entries: int, e: SyscallError) -> SyscallError:
    try:
        tname = MapType(spec.type).name
    except ValueError:
        tname = str(spec.type)
    hint = ""
    if e.errno == _errno.EINVAL:
        hint = ("; check the map's type, sizes and flags (e.g. ring buffers need key/value size 0, "
                "hash maps a non-zero key size)")
    elif e.errno == _errno.E2BIG:
        hint = "; the map is too large for this kernel"
    elif e.errno == _errno.ENOMEM:
        hint = "; not enough memory (or memlock limit) for this map"
    err = type(e)(e.command, e.errno,
                  f"map {spec.name!r} (type {tname}, key_size {spec.key_size}, value_size {spec.value_size}, "
                  f"max_entries {max_entries}, flags 0x{spec.flags:x}) was refused{hint}")
    return err


def _verifier_summary(log: str, linked: Optional[LinkedProgram] = None, btf=None) -> tuple[str, str]:
    """(one-line reason, detail lines) from a verifier log: the C source line of the failing
    instruction (from our line_info when we have it, else the log's own annotation), the
    instruction, and the error lines."""
    lines = [l for l in log.splitlines() if l.strip()]
    end = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("processed ") or lines[i].startswith("verification time"):
            end = i
    lines = lines[:end]
    insn_re = re.compile(r"^(\d+): \(")
    last_insn = max((i for i, l in enumerate(lines) if insn_re.match(l)), default=-1)
    errors = lines[last_insn + 1:] if last_insn >= 0 else lines[-3:]
    errors = [l for l in errors if not l.startswith(";")] or lines[-1:]
    details = []
    where = None
    if last_insn >= 0 and linked is not None and btf is not None and linked.line_info:
        idx = int(insn_re.match(lines[last_insn]).group(1))
        fn = linked.function_at(idx)
        recs = [r for r in linked.line_info if r[0] <= idx and (fn is None or r[0] >= fn[1])]
        if recs:
            insn, file_off, line_off, line_col = max(recs, key=lambda r: r[0])
            try:
                where = (f"  at {btf.string(file_off).lstrip('./')}:{line_col >> 10}"
                         f"{' (in ' + fn[0].name + ')' if fn else ''}: {btf.string(line_off).strip()}")
            except Exception:
                where = None
    if where is None and last_insn >= 0:
        src = next((l for l in reversed(lines[:last_insn + 1]) if l.startswith(";")), None)
        if src:
            text, _, at = src[1:].strip().rpartition(" @ ")
            where = f"  at {at}: {text.strip()}" if at else f"  at {src[1:].strip()}"
    if where:
        details.append(where)
    if last_insn >= 0:
        details.append(f"  instruction {lines[last_insn]}")
    reason = errors[0] if errors else "(no reason in the log)"
    details += [f"  {l}" for l in errors[1:5]]
    return reason, "\n".join(details)


def load_program(prog: ProgramSpec, linked: LinkedProgram, insns: bytearray, btf_fd: int,
                 attach_btf_id: int = 0, attach_btf_obj_fd: int = 0, btf=None) -> int:
    """BPF_PROG_LOAD; on rejection reload with a verifier log and raise VerifierError."""
    sec = prog.sec_def
    insn_buf = (ctypes.c_char * len(insns)).from_buffer(insns)
    license = ctypes.create_string_buffer((prog.license or "").encode())
    fi = (ctypes.c_uint32 * (2 * len(linked.func_info)))(*[v for rec in linked.func_info for v in rec])
    li = (ctypes.c_uint32 * (4 * len(linked.line_info)))(*[v for rec in linked.line_info for v in rec])
    flags = 0
    if sec.flags & S.SLEEPABLE:
        from ..kernel.constants import BPF_F_SLEEPABLE
        flags |= BPF_F_SLEEPABLE
    if sec.flags & S.XDP_FRAGS:
        from ..kernel.constants import BPF_F_XDP_HAS_FRAGS
        flags |= BPF_F_XDP_HAS_FRAGS

    def attr(log_buf=None) -> ProgLoadAttr:
        a = ProgLoadAttr(prog_type=prog.prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(insn_buf),
                         license=ctypes.addressof(license), kern_version=prog.kern_version, prog_flags=flags,
                         prog_name=_kernel_name(prog.name), attach_btf_id=attach_btf_id)
        if prog.expected_attach_type is not None:
            a.expected_attach_type = prog.expected_attach_type
        if attach_btf_obj_fd:
            a.attach_btf_obj_fd = attach_btf_obj_fd
        if btf_fd >= 0 and linked.func_info:
            a.prog_btf_fd = btf_fd
            a.func_info_rec_size = 8
            a.func_info = ctypes.addressof(fi)
            a.func_info_cnt = len(linked.func_info)
            a.line_info_rec_size = 16
            a.line_info = ctypes.addressof(li)
            a.line_info_cnt = len(linked.line_info)
        if log_buf is not None:
            a.log_level = 1
            a.log_buf = ctypes.addressof(log_buf)
            a.log_size = len(log_buf)
        return a

    try:
        return sc.bpf(Cmd.PROG_LOAD, attr())
    except SyscallError as first:
        failure = first
    size = _LOG_START
    log = ""
    while True:
        buf = ctypes.create_string_buffer(size)
        a = attr(buf)
        try:
            return sc.bpf(Cmd.PROG_LOAD, a)   # a transient first failure: keep the program
        except SyscallError as e:
            log = buf.value.decode(errors="replace")
            if e.errno == _errno.ENOSPC and size < _LOG_MAX:
                size = max(size * 4, a.log_true_size or 0)
                continue
            failure = e
            break
    where = f"program {prog.name!r} (section {prog.section!r}, {ProgType(prog.prog_type).name})"
    if not log.strip():
        if failure.errno == _errno.EPERM and os.geteuid() == 0:
            raise NotSupportedError(
                f"{where}: loading was not permitted by this kernel (EPERM with an empty verifier log; "
                f"for fentry/fexit/fmod_ret/lsm this means the kernel has no BPF trampolines)") from None
        raise failure
    reason, details = _verifier_summary(log, linked, btf)
    raise VerifierError(failure.command, failure.errno,
                        f"{where} was rejected by the verifier: {reason}\n{details}\n"
                        f"(the whole log is in the exception's .log)", log) from None


def load_spec(spec: ObjectSpec, *, btf: bool = True, facts=None, target_btf=None):
    """Load everything in ``spec`` into the kernel and return a :class:`pybpf.Object`.

    ``target_btf`` (a BTF file path or :class:`~pybpf.spec.btf.BTF`) replaces the
    running kernel's BTF as the CO-RE target; ``facts`` (a
    :class:`~pybpf.loader.facts.KernelFacts`) replaces every kernel fact.
    """
    from ..collection import Object
    from .facts import KernelFacts
    if facts is None:
        if isinstance(target_btf, (str, os.PathLike)):
            from ..spec.btf import BTF as _BTF
            target_btf = _BTF.load(os.fspath(target_btf))
        facts = KernelFacts.running(btf=target_btf)
    # link first: it is pure, so an object pybpf cannot handle (externs, CO-RE, bad
    # relocations) fails with its own message before anything is put in the kernel
    linked = {}
    for name, pspec in spec.programs.items():
        if not pspec.autoload:
            continue
        if pspec.sec_def.flags & S.ATTACH_BTF:
            raise NotSupportedError(
                f"program {name!r} (section {pspec.section!r}) needs an attach_btf_id from kernel BTF "
                f"(tp_btf, fentry, fexit, fmod_ret, lsm, iter), which pybpf does not resolve yet")
        try:
            linked[name] = link_program(spec, pspec, facts)
        except ObjectError as e:
            raise type(e)(f"{spec.path}: {e}") from None
    obj = Object(spec)
    try:
        if btf and spec.btf is not None:
            obj._btf_fd = load_btf(spec.btf.to_bytes())
        for name, mspec in spec.maps.items():
            inner_fd = -1
            if mspec.inner is not None:
                inner_fd = create_map(mspec.inner, obj._btf_fd)
            try:
                fd = create_map(mspec, obj._btf_fd, inner_fd)
            finally:
                if inner_fd >= 0:
                    os.close(inner_fd)
            m = obj._add_map(mspec, fd)
            if mspec.data is not None:
                m._write_initial(bytes(mspec.data))
                if mspec.readonly:
                    sc.map_freeze(fd)
        fds = {name: m.fd for name, m in obj.maps.items()}
        for name, lp in linked.items():
            pspec = spec.programs[name]
            fd = load_program(pspec, lp, lp.with_map_fds(fds), obj._btf_fd, btf=spec.btf)
            obj._add_program(pspec, fd, lp)
    except BaseException:
        obj.close()
        raise
    return obj
