"""uprobe.multi: one BPF link (BPF_TRACE_UPROBE_MULTI, Linux 6.6) probing every function of an
ELF file whose symbol matches a glob, each with its own BPF cookie."""

from __future__ import annotations

import ctypes
import errno as _errno
import fnmatch
import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from ..resource import deferred_signals
from .base import Link
from .uprobe import resolve_binary

BPF_F_UPROBE_MULTI_RETURN = 1 << 0
_MAX_CNT = 1 << 20            # kernel limit on offsets per link (MAX_UPROBE_MULTI_CNT): E2BIG above


def _segments(elf) -> list:
    return [(s["p_vaddr"], s["p_memsz"], s["p_offset"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]


def uprobe_multi_offsets(path: str, pattern: str) -> list[tuple[str, int]]:
    """``(symbol, file offset)`` of every function of ELF file ``path`` whose name matches the
    glob ``pattern`` (``*``, ``?``, ``[...]``), as libbpf's elf_resolve_pattern_offsets: defined
    STT_FUNC symbols of .symtab and .dynsym (a ``@VERSION`` suffix is not part of the name),
    one entry per distinct offset (aliases at one address count once, under the first name in
    name order); sorted by symbol name.  Raises Error when nothing matches."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection
    found: dict[int, str] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segs = _segments(elf)
            for sec_name in (".symtab", ".dynsym"):
                sec = elf.get_section_by_name(sec_name)
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    name = sym.name.split("@", 1)[0]
                    if not name or sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF" \
                            or not sym["st_value"] or not fnmatch.fnmatchcase(name, pattern):
                        continue
                    vaddr = sym["st_value"]
                    off = next((vaddr - va + fo for va, sz, fo in segs if va <= vaddr < va + sz), None)
                    if off is None:
                        continue
                    if off not in found or name < found[off]:
                        found[off] = name
    except OSError as e:
        raise Error(f"cannot read uprobe binary {path}: {e.strerror}") from None
    except ELFError as e:
        raise Error(f"uprobe binary {path} is not a valid ELF file: {e}") from None
    if not found:
        raise Error(f"no function of {path} matches {pattern!r} (in .symtab or .dynsym)")
    return sorted(((name, off) for off, name in found.items()), key=lambda x: (x[0], x[1]))


def _cookie_list(program, cookies, names: list) -> list | None:
    from .perf_event import _cookie
    if cookies is None:
        return None
    if isinstance(cookies, int) and not isinstance(cookies, bool):
        return [_cookie(cookies)] * len(names)
    if isinstance(cookies, dict):
        unknown = sorted(set(cookies) - set(names))
        if unknown:
            raise Error(f"program {program.name!r}: cookies for {unknown}, which the pattern does not match "
                        f"(matched: {names})")
        return [_cookie(cookies.get(n, 0)) for n in names]
    cookies = list(cookies)
    if len(cookies) != len(names):
        raise Error(f"program {program.name!r}: {len(cookies)} cookies for {len(names)} matched functions "
                    f"{names} (give one per function in that order, or a dict name -> cookie)")
    return [_cookie(c) for c in cookies]


def _require_kernel() -> None:
    from .xdp import kernel_has
    if kernel_has("bpf_attach_type", "BPF_TRACE_UPROBE_MULTI") is False:
        raise NotSupportedError("this kernel has no uprobe.multi links (BPF_TRACE_UPROBE_MULTI is not in its BTF's "
                                "enum bpf_attach_type; Linux 6.6 brought them): attach each function with "
                                "attach_uprobe()")


class UprobeMultiLink(Link):
    """A uprobe.multi link; ``symbols`` and ``offsets`` say what it probes, ``cookies`` with what."""

    symbols: list
    offsets: list
    cookies: list | None


def attach_uprobe_multi(program, binary: str, pattern: str, pid: int = -1, retprobe: bool = False,
                        cookies=None) -> Link:
    """Probe every function of ``binary`` (a path, or a name looked up as libbpf does) whose
    symbol matches the glob ``pattern`` with one BPF_TRACE_UPROBE_MULTI link (entry, or return
    with ``retprobe``), in process ``pid`` only (-1: every process).

    ``cookies``: what bpf_get_attach_cookie() returns at each function: a dict symbol -> cookie
    (unnamed ones get 0), a list in the order of :func:`uprobe_multi_offsets` (by symbol name),
    or one int for all.  The program must be a uprobe.multi one (loaded with expected attach
    type BPF_TRACE_UPROBE_MULTI: SEC("uprobe.multi...") / SEC("uretprobe.multi...")).  Needs
    Linux 6.6."""
    if program.type != ProgType.KPROBE:
        raise Error(f"program {program.name!r} is a {program.type.name} program; uprobe.multi needs a "
                    f"SEC(\"uprobe.multi\") program")
    attach_type = program.spec.expected_attach_type
    if attach_type not in (AttachType.TRACE_UPROBE_MULTI, getattr(AttachType, "TRACE_UPROBE_SESSION", -1)):
        raise Error(f"program {program.name!r} (section {program.section!r}) was not loaded for uprobe.multi "
                    f"(its expected attach type must be BPF_TRACE_UPROBE_MULTI: use SEC(\"uprobe.multi\") or "
                    f"SEC(\"uretprobe.multi\"))")
    if not isinstance(pattern, str) or not pattern:
        raise Error(f"program {program.name!r}: uprobe.multi needs a symbol pattern (e.g. 'func_*')")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < -1:
        raise Error(f"program {program.name!r}: pid {pid!r}: give a process id, or -1 for every process")
    _require_kernel()
    path = resolve_binary(binary)
    matched = uprobe_multi_offsets(path, pattern)
    if len(matched) > _MAX_CNT:
        raise Error(f"program {program.name!r}: {len(matched)} functions match {pattern!r}; a uprobe.multi "
                    f"link takes at most {_MAX_CNT}")
    names = [n for n, _ in matched]
    cookie_values = _cookie_list(program, cookies, names)
    path_buf = ctypes.create_string_buffer(os.fsencode(path))
    offsets = (ctypes.c_uint64 * len(matched))(*[o for _, o in matched])
    attr = LinkCreateAttr(prog_fd=program.fd, target_fd=0, attach_type=attach_type)
    um = attr.uprobe_multi
    um.path = ctypes.addressof(path_buf)
    um.offsets = ctypes.addressof(offsets)
    um.cnt = len(matched)
    # uprobe sessions run one program at entry and return: no RETURN flag
    um.flags = BPF_F_UPROBE_MULTI_RETURN if retprobe and attach_type == AttachType.TRACE_UPROBE_MULTI else 0
    um.pid = 0 if pid == -1 else pid          # the kernel's "every process" is pid 0
    if cookie_values is not None:
        cookie_arr = (ctypes.c_uint64 * len(matched))(*cookie_values)
        um.cookies = ctypes.addressof(cookie_arr)
    target = f"{binary}:{pattern}"

    def make() -> int:
        try:
            return sc.bpf(Cmd.LINK_CREATE, attr)
        except SyscallError as e:
            hint = ""
            if e.errno == _errno.ESRCH:
                hint = f" (no process {pid})"
            elif e.errno == _errno.EINVAL:
                hint = " (the program must be loaded with expected attach type BPF_TRACE_UPROBE_MULTI)"
            elif e.errno in (_errno.EOPNOTSUPP, 524):
                raise NotSupportedError(f"program {program.name!r}: this kernel refuses uprobe.multi links "
                                        f"(BPF_LINK_CREATE: {_errno.errorcode.get(e.errno, e.errno)}; they need "
                                        f"CONFIG_UPROBES, Linux 6.6)") from None
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach uprobe.multi to "
                                              f"{len(matched)} functions of {path} matching {pattern!r}{hint}") from None

    with deferred_signals() as section:
        link = UprobeMultiLink(program, "uretprobe_multi" if retprobe else "uprobe_multi", target, [make()])
        section.on_interrupt(link)
    link.symbols = names
    link.offsets = [o for _, o in matched]
    link.cookies = cookie_values
    return link


def attach_uprobe_multi_target(program, target: str, retprobe: bool, cookie: int | None = None) -> Link:
    """A section's ``PATH:PATTERN`` target (SEC("uprobe.multi/PATH:PATTERN")), one cookie for all."""
    path, sep, pattern = (target or "").rpartition(":")
    if not sep or not path or not pattern:
        raise Error(f"program {program.name!r} (section {program.section!r}): uprobe.multi target {target!r} is "
                    f"not 'PATH:PATTERN' (e.g. SEC(\"uprobe.multi//usr/bin/bash:readline*\")), or attach it with "
                    f"attach_uprobe_multi(binary, pattern)")
    return attach_uprobe_multi(program, path, pattern, -1, retprobe, cookie)
