"""Externs: ``.kconfig`` values, ``.ksyms`` kernel symbols and kfuncs, resolved at load.

:mod:`pybpf.spec.object` collects the externs of an object (``spec.externs``,
:class:`~pybpf.spec.object.ExternSpec`) and lays out its ``.kconfig`` map; this
module resolves them against a kernel's facts (a
:class:`~pybpf.loader.facts.KernelFacts`: config, version, BTF, kallsyms, so
tests can inject another kernel) and relocates the instructions that use them.
The rules are libbpf's (bpf_object__resolve_externs, bpf_object__relocate_data):

- ``.kconfig``: LINUX_KERNEL_VERSION, LINUX_HAS_SYSCALL_WRAPPER,
  LINUX_HAS_BPF_COOKIE and CONFIG_* options, typed by the extern's declaration
  (bool, enum libbpf_tristate, char, integer, char array for strings), in the
  read-only ``<obj>.kconfig`` map; ld_imm64 becomes BPF_PSEUDO_MAP_VALUE at the
  extern's offset.
- typed ksyms (a VAR with a type): ld_imm64 BPF_PSEUDO_BTF_ID, imm = the VAR's
  id in vmlinux (or a module's) BTF, second imm = the module BTF fd (0 = vmlinux).
- untyped ksyms (``extern const void x __ksym``): the kallsyms address as the
  ld_imm64 constant.
- kfuncs: ``call`` with src_reg BPF_PSEUDO_KFUNC_CALL, imm = the FUNC's BTF id,
  off = index of the module's BTF fd in the program's fd_array (0 = vmlinux); an
  ld_imm64 of a kfunc (``bpf_ksym_exists()``) is a BPF_PSEUDO_BTF_ID.
- a weak extern the kernel does not have is 0 (kconfig value, ld_imm64
  address); a call to a missing weak kfunc is "poisoned" into a call of helper
  2002000000 + extern index, which the verifier accepts only as dead code; a
  missing strong extern fails the load naming it.
"""

from __future__ import annotations

import os
import struct
import warnings
import weakref
from collections.abc import Callable

from .._record import Record
from ..errors import Error, ObjectError
from ..spec import insn as I
from ..spec.btf import BTF, Kind
from .core import CoreError, essential_name
from .core import types_are_compat as _core_types_are_compat
from .linked import MapRef

#: libbpf's constant for a call to an unresolved weak kfunc (+ the extern's index)
POISON_CALL_KFUNC_BASE = 2002000000

KCONFIG = "kconfig"
KSYM = "ksym"


def kernel_version_code(major: int, minor: int, patch: int = 0) -> int:
    return (major << 16) | (minor << 8) | min(patch, 255)


# -- kernel facts libbpf probes -------------------------------------------------------------

# libbpf arch_specific_syscall_pfx(): the prefix of syscall wrappers, by uname machine
_SYSCALL_PREFIX = {"x86_64": "x64", "i386": "ia32", "i686": "ia32", "s390x": "s390", "s390": "s390",
                   "armv7l": "arm", "armv6l": "arm", "aarch64": "arm64", "mips": "mips", "mips64": "mips",
                   "riscv64": "riscv", "ppc64": "powerpc", "ppc64le": "powerpc", "loongarch64": "loongarch"}


def has_syscall_wrapper(facts) -> bool:
    """LINUX_HAS_SYSCALL_WRAPPER: syscalls go through ``__<arch>_sys_*(struct pt_regs *)`` wrappers.

    libbpf probes it by creating a kprobe on ``__<arch>_sys_bpf``, which says
    "no" on a kernel without kprobes.  pybpf asks the kernel's facts instead:
    CONFIG_ARCH_HAS_SYSCALL_WRAPPER, else whether the wrapper symbol exists."""
    cfg = facts.kconfig.get("CONFIG_ARCH_HAS_SYSCALL_WRAPPER")
    if cfg is not None:
        return cfg == "y"
    pfx = _SYSCALL_PREFIX.get(os.uname().machine)
    if pfx is None:
        return False
    name = f"__{pfx}_sys_bpf"
    if facts.ksym_address(name):
        return True
    btf = facts.btf
    return bool(btf is not None and btf.by_name(name, Kind.FUNC))


def has_bpf_cookie(facts) -> bool:
    """LINUX_HAS_BPF_COOKIE: the kernel has the bpf_get_attach_cookie() helper (5.15+)."""
    btf = facts.btf
    if btf is not None:
        for t in btf.by_name("bpf_func_id", Kind.ENUM):
            return any(v.name == "BPF_FUNC_get_attach_cookie" for v in t.values)
    return facts.kernel_version >= kernel_version_code(5, 15)


# -- type compatibility (libbpf __bpf_core_types_are_compat) ---------------------------------

def types_are_compat(local: BTF, local_id: int, targ: BTF, targ_id: int) -> bool:
    """libbpf's loose CO-RE type compatibility (``pybpf.loader.core.types_are_compat``), used to
    check a typed ksym's type and a kfunc's prototype against the kernel's, with modifiers and
    typedefs skipped on both sides first; a type nested too deeply is not compatible."""
    try:
        return _core_types_are_compat(local, local.skip_mods(local_id), targ, targ.skip_mods(targ_id))
    except CoreError:
        return False


# -- resolution -------------------------------------------------------------------------------

class ResolvedExtern(Record):
    """What an extern became on one kernel.  ``resolved`` False: a weak extern the
    kernel does not have (its value/address is 0, calls to it are poisoned)."""

    _fields = ("name", "resolved", "btf_id", "module", "fd_index", "address")

    def __init__(self, name: str, resolved: bool = False, btf_id: int = 0, module: str | None = None,
                 fd_index: int = 0, address: int = 0):
        self.name = name
        self.resolved = resolved
        self.btf_id = btf_id  # typed ksyms and kfuncs: the VAR/FUNC id in the kernel's BTF
        self.module = module  # ... in this module's BTF (None: vmlinux)
        self.fd_index = fd_index  # kfuncs in modules: index of the module BTF fd in fd_array
        self.address = address  # untyped ksyms: the kallsyms address


def open_module_btf_fd(module: str) -> int:
    """A new fd for the running kernel's BTF object of ``module`` (the caller closes it)."""
    from ..kernel.btf import module_btf_fd
    return module_btf_fd(module)


class ExternResolution:
    """The externs of one object resolved against one kernel's facts.

    ``kconfig`` is the ``.kconfig`` map's contents, ``externs`` name ->
    :class:`ResolvedExtern`, ``modules`` the module BTFs kfuncs come from, in
    fd_array order (index 1 up: 0 means vmlinux).  Module BTF fds are opened on
    first use (``module_btf_fd`` replaces the opener, for tests) and closed by
    :meth:`close`.
    """

    def __init__(self, spec, facts, module_btf_fd: Callable[[str], int] | None = None):
        # weak: resolutions are kept in a table weakly keyed by the spec (_resolutions), and a
        # value that held its key would keep every resolved spec for the life of the process
        self._spec = weakref.ref(spec)
        self.facts = facts
        self.kconfig = bytearray(spec.kconfig_size)
        self.externs: dict[str, ResolvedExtern] = {}
        self.modules: list[str] = []
        self._open_module_fd = module_btf_fd or open_module_btf_fd
        self._module_fds: dict[str, int] = {}

    @property
    def spec(self):
        spec = self._spec()
        if spec is None:
            raise Error("the object these externs were resolved for is gone")
        return spec

    def module_btf_fd(self, module: str) -> int:
        fd = self._module_fds.get(module)
        if fd is None:
            fd = self._module_fds[module] = self._open_module_fd(module)
        return fd

    def fd_array(self) -> list | None:
        """BPF_PROG_LOAD's fd_array for module kfuncs (slot 0 unused), None without any."""
        if not self.modules:
            return None
        return [0] + [self.module_btf_fd(m) for m in self.modules]

    def close(self) -> None:
        fds, self._module_fds = self._module_fds, {}
        if self._open_module_fd is open_module_btf_fd:
            for fd in fds.values():
                os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- .kconfig ------------------------------------------------------------------------

    def _fail(self, ext, what: str) -> ObjectError:
        return ObjectError(f"extern {ext.name!r} ({ext.kind}{', weak' if ext.weak else ''}): {what}")

    def _set_number(self, ext, value: int, shown: str) -> None:
        if ext.kconfig_type not in ("int", "char", "bool"):
            raise self._fail(ext, f"value {shown} needs an integer, char or bool type, not "
                                  f"{self.spec.btf.type_name(ext.var_type_id)}")
        if ext.kconfig_type == "bool" and value not in (0, 1):
            raise self._fail(ext, f"value {shown} is not a bool")
        bits = ext.size * 8
        v = value % (1 << 64)
        if ext.size < 8:
            fits = (v + (1 << (bits - 1))) % (1 << 64) < (1 << bits) if ext.signed else v >> bits == 0
            if not fits:
                raise self._fail(ext, f"value {shown} does not fit in {ext.size} bytes")
        self._store(ext, (v % (1 << bits)).to_bytes(ext.size, "little"))

    def _store(self, ext, raw: bytes) -> None:
        self.kconfig[ext.offset:ext.offset + len(raw)] = raw
        self.externs[ext.name] = ResolvedExtern(ext.name, resolved=True)

    def _set_config(self, ext, value: str) -> None:
        """One ``CONFIG_X=value`` as libbpf's bpf_object__process_kconfig_line reads it."""
        t = ext.kconfig_type
        if value[:1] in ("y", "n", "m"):
            c = value[0]
            if t == "bool":
                if c == "m":
                    raise self._fail(ext, "value 'm' (module) needs a tristate or char type, not bool")
                self._store(ext, b"\1" if c == "y" else b"\0")
            elif t == "tristate":
                self._store(ext, {"n": 0, "y": 1, "m": 2}[c].to_bytes(ext.size, "little"))
            elif t == "char":
                self._store(ext, c.encode())
            else:
                raise self._fail(ext, f"value {c!r} needs a bool, tristate or char type, not "
                                      f"{self.spec.btf.type_name(ext.var_type_id)}")
        elif value[:1] == '"':
            if t != "char_array":
                raise self._fail(ext, f"string value {value} needs a char array type")
            if len(value) < 2 or value[-1] != '"':
                raise self._fail(ext, f"invalid string value {value}")
            text = value[1:-1].encode()
            if len(text) >= ext.size:
                warnings.warn(f"extern {ext.name!r}: string {value} truncated to {ext.size - 1} bytes")
                text = text[:ext.size - 1]
            self._store(ext, text + b"\0")
        else:
            num = _parse_c_integer(value)
            if num is None:
                raise self._fail(ext, f"value {value!r} is not a valid integer")
            if t not in ("int", "char"):
                raise self._fail(ext, f"value {value!r} needs an integer type, not "
                                      f"{self.spec.btf.type_name(ext.var_type_id)}")
            self._set_number(ext, num, repr(value))

    def _resolve_kconfig(self, ext) -> None:
        name = ext.name
        facts = self.facts
        if name.startswith("CONFIG_"):
            value = facts.kconfig.get(name)
            # "# CONFIG_X is not set" (facts say "n") is false/'n'/TRI_NO for the types that
            # have such a value; an integer or string option that is not set is missing
            if value is not None and not (value == "n" and ext.kconfig_type in ("int", "char_array")):
                self._set_config(ext, value)
            return
        if name == "LINUX_KERNEL_VERSION":
            version = facts.kernel_version
            if not version:
                raise self._fail(ext, "the kernel version is unknown")
            self._set_number(ext, version, f"0x{version:x}")
        elif name == "LINUX_HAS_BPF_COOKIE":
            self._set_number(ext, int(has_bpf_cookie(facts)), "LINUX_HAS_BPF_COOKIE")
        elif name == "LINUX_HAS_SYSCALL_WRAPPER":
            self._set_number(ext, int(has_syscall_wrapper(facts)), "LINUX_HAS_SYSCALL_WRAPPER")
        elif name.startswith("LINUX_") and ext.weak:
            self._set_number(ext, 0, "0")       # a virtual extern this loader does not know: weak, so 0
        else:
            raise self._fail(ext, "unknown .kconfig extern: pybpf knows CONFIG_* options and "
                                  "LINUX_KERNEL_VERSION, LINUX_HAS_SYSCALL_WRAPPER, LINUX_HAS_BPF_COOKIE "
                                  "(unknown LINUX_* externs must be __weak)")

    # -- .ksyms --------------------------------------------------------------------------

    def _kernel_btf(self, ext) -> BTF:
        btf = self.facts.btf
        if btf is None:
            raise self._fail(ext, "a typed ksym or kfunc needs the kernel's BTF, and there is none "
                                  "(pass target_btf= or facts with a BTF)")
        return btf

    def _find(self, ext, name: str, kind: Kind):
        """(btf, type, module) of the first ``kind`` called ``name`` in vmlinux, else in a module."""
        vmlinux = self._kernel_btf(ext)
        found = vmlinux.by_name(name, kind)
        if found:
            return vmlinux, found[0], None
        for module, mbtf in self.facts.module_btfs.items():
            own = [t for t in mbtf.by_name(name, kind) if t.id >= mbtf.first_id]
            if own:
                return mbtf, own[0], module
        return None, None, None

    def _resolve_ksym(self, ext) -> None:
        local = self.spec.btf
        if not ext.type_id:
            # untyped: an address from kallsyms
            address = self.facts.ksym_address(ext.name)
            if address is not None:
                self.externs[ext.name] = ResolvedExtern(ext.name, True, address=address)
            return
        if not ext.is_func:
            btf, var, module = self._find(ext, ext.name, Kind.VAR)
            if var is None:
                return
            if not types_are_compat(local, ext.type_id, btf, var.type_id):
                raise self._fail(ext, f"its type {local.type_name(ext.type_id)} does not match the kernel's "
                                      f"{btf.type_name(btf.skip_mods(var.type_id))} "
                                      f"([{var.id}] in {module or 'vmlinux'})")
            self.externs[ext.name] = ResolvedExtern(ext.name, True, btf_id=var.id, module=module)
            return
        btf, func, module = self._find(ext, essential_name(ext.name), Kind.FUNC)
        if func is None:
            return
        if not types_are_compat(local, ext.type_id, btf, func.type_id):
            if ext.weak:
                return
            raise self._fail(ext, f"its prototype does not match the kernel's kfunc [{func.id}] "
                                  f"{func.name} in {module or 'vmlinux'}")
        fd_index = 0
        if module is not None:
            if module not in self.modules:
                if len(self.modules) + 1 > 0x7FFF:
                    raise self._fail(ext, "too many module BTFs for the instruction's 16-bit offset")
                self.modules.append(module)
            fd_index = self.modules.index(module) + 1
        self.externs[ext.name] = ResolvedExtern(ext.name, True, btf_id=func.id, module=module,
                                                fd_index=fd_index)

    def resolve(self) -> ExternResolution:
        untyped = [e.name for e in self.spec.externs.values() if e.kind != KCONFIG and not e.type_id]
        if untyped and hasattr(self.facts, "prefetch_ksyms"):
            self.facts.prefetch_ksyms(untyped)        # one pass over /proc/kallsyms for all of them
        for ext in sorted(self.spec.externs.values(), key=lambda e: e.index):
            if ext.kind == KCONFIG:
                self._resolve_kconfig(ext)
            else:
                self._resolve_ksym(ext)
        for ext in sorted(self.spec.externs.values(), key=lambda e: e.index):
            if ext.name in self.externs:
                continue
            if not ext.weak:
                raise self._fail(ext, self._missing(ext))
            self.externs[ext.name] = ResolvedExtern(ext.name, False)
        return self

    def _missing(self, ext) -> str:
        weak_hint = "; declare it __weak to default to 0"
        if ext.kind == KCONFIG:
            if not self.facts.kconfig:
                return ("the kernel config could not be read (/proc/config.gz, /boot/config-$(uname -r))"
                        + weak_hint)
            if self.facts.kconfig.get(ext.name) == "n":
                return f"{ext.name} is not set in the kernel config" + weak_hint
            return f"{ext.name} is not in the kernel config" + weak_hint
        if not ext.type_id:
            return f"no symbol {ext.name!r} in /proc/kallsyms" + weak_hint
        if ext.is_func:
            return (f"no kfunc {essential_name(ext.name)!r} in the kernel's BTF (vmlinux or modules); "
                    f"declare it __weak and test it with bpf_ksym_exists()")
        return f"no variable {ext.name!r} in the kernel's BTF (vmlinux or modules)" + weak_hint


def _parse_c_integer(text: str) -> int | None:
    """strtoull(text, 0) that must consume everything: 0x hex, 0 octal, decimal, a sign
    (negative values wrap as in C, so they fit signed types)."""
    s = text.strip()
    neg = s.startswith("-")
    if s[:1] in ("+", "-"):
        s = s[1:]
    if not s or not s[0].isdigit() or "_" in s:
        return None
    try:
        if s[:2] in ("0x", "0X"):
            v = int(s[2:], 16)
        elif s.startswith("0") and len(s) > 1:
            v = int(s[1:], 8)
        else:
            v = int(s, 10)
    except ValueError:
        return None
    return -v if neg else v


# one resolution per (object, facts) while a load is linking its programs
_resolutions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_default_facts = None


def _facts(facts):
    global _default_facts
    if facts is not None:
        return facts
    if _default_facts is None:
        from .facts import KernelFacts
        _default_facts = KernelFacts.running()
    return _default_facts


def resolve(spec, facts=None, *, module_btf_fd: Callable[[str], int] | None = None) -> ExternResolution:
    """Resolve ``spec``'s externs against ``facts`` (the running kernel's by default) and keep
    the result for linking ``spec``'s programs with the same facts.  Raises ObjectError
    naming a strong extern the kernel does not have, or a value that does not fit its type."""
    facts = _facts(facts)
    res = ExternResolution(spec, facts, module_btf_fd).resolve()
    _resolutions.setdefault(spec, weakref.WeakKeyDictionary())[facts] = res
    return res


def resolution_for(spec, facts=None) -> ExternResolution:
    """The resolution kept for (``spec``, ``facts``), resolving now if there is none."""
    facts = _facts(facts)
    per_spec = _resolutions.get(spec)
    res = per_spec.get(facts) if per_spec is not None else None
    return res if res is not None else resolve(spec, facts)


def release(spec, facts=None) -> None:
    """Forget the resolution for (``spec``, ``facts``) and close the module BTF fds it opened."""
    per_spec = _resolutions.get(spec)
    res = per_spec.pop(_facts(facts), None) if per_spec is not None else None
    if res is not None:
        res.close()


# -- relocation -------------------------------------------------------------------------------

def _set_off(buf: bytearray, index: int, off: int) -> None:
    struct.pack_into("<h", buf, index * I.INSN_SIZE + 2, off)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def relocate(linker, fn, local: int, idx: int, r) -> None:
    """Relocate instruction ``idx`` of ``linker``'s program, whose ELF relocation ``r``
    refers to an undefined symbol: an extern (libbpf bpf_object__relocate_data)."""
    spec = linker.spec
    sym = r.symbol
    ext = spec.externs.get(sym.name)
    if ext is None:
        raise linker.fail(fn, local, f"refers to undefined symbol {sym.name!r}, which is not a .kconfig or "
                                     f".ksyms extern (forgot to define a global?)")
    insns = linker.insns
    code = insns[idx * I.INSN_SIZE]
    res = resolution_for(spec, linker.facts)
    rx = res.externs[ext.name]
    if code == I.CALL:
        if not ext.is_func:
            raise linker.fail(fn, local, f"calls extern {ext.name!r}, which is not a function (a kfunc is "
                                         f"declared 'extern <type> name(<args>) __ksym')")
        if rx.resolved:
            I.set_src_reg(insns, idx, I.PSEUDO_KFUNC_CALL)
            I.set_imm(insns, idx, rx.btf_id)
            _set_off(insns, idx, rx.fd_index)
        else:
            # a missing weak kfunc: an invalid helper call the verifier accepts only in dead code
            I.INSN.pack_into(insns, idx * I.INSN_SIZE, I.CALL, 0, 0, POISON_CALL_KFUNC_BASE + ext.index)
        return
    if code != I.LD_IMM64:
        raise linker.fail(fn, local, f"extern {ext.name!r} is used by an instruction that is neither ld_imm64 "
                                     f"nor call (opcode 0x{code:02x})")
    if ext.kind == KCONFIG:
        m = spec.internal_map_for_section(".kconfig")
        linker.map_refs.append(MapRef(idx, m.name, ext.offset))
    elif ext.type_id and rx.resolved:
        I.set_src_reg(insns, idx, I.PSEUDO_BTF_ID)
        I.set_imm(insns, idx, rx.btf_id)
        I.set_imm(insns, idx + 1, res.module_btf_fd(rx.module) if rx.module else 0)
    else:
        # untyped ksym (or a missing weak one: 0)
        I.set_imm(insns, idx, _s32(rx.address))
        I.set_imm(insns, idx + 1, _s32(rx.address >> 32))


# -- explaining verifier errors ------------------------------------------------------------------

def explain(err: Error, spec) -> Error:
    """Add what the verifier's words mean for externs to ``err`` (a VerifierError); returns it."""
    text = str(err)
    hints = []
    by_index = {e.index: e for e in spec.externs.values()}
    import re
    for m in re.finditer(r"unknown#(\d+)", text):
        ext = by_index.get(int(m.group(1)) - POISON_CALL_KFUNC_BASE)
        if ext is not None:
            hints.append(f"the program calls kfunc {ext.name!r}, which this kernel does not have (a weak "
                         f"extern left unresolved): guard the call with bpf_ksym_exists({ext.name})")
            break
    if "failed to find the address for kernel symbol" in text:
        hints.append("the kernel looks a typed ksym's address up in kallsyms, which lists variables only "
                     "with CONFIG_KALLSYMS_ALL=y")
    if hints:
        err.args = (text + "".join(f"\n  hint: {h}" for h in hints),)
    return err
