"""Uprobes and uretprobes: ``PATH:FUNC[+OFFSET]`` resolved to a file offset in the ELF
file, then the uprobe PMU through perf_event_open."""

from __future__ import annotations

import ctypes
import os

from ..errors import Error
from ..kernel import perf, tracefs
from .perf_event import Link, _perf_link


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


def attach_uprobe(program, target: str, retprobe: bool, pid: int = -1, cookie: int | None = None) -> Link:
    """Attach to ``PATH:FUNC[+OFFSET]`` in user space through the uprobe PMU
    (config1 = path, config2 = file offset).  ``pid`` -1 probes every process.
    ``cookie``: what bpf_get_attach_cookie() returns (link_create.perf_event.bpf_cookie)."""
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
    return _perf_link(program, attr, pid, 0 if pid == -1 else -1, "uretprobe" if retprobe else "uprobe", target,
                      cookie)


