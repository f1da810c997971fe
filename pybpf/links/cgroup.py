"""cgroup programs on a cgroup v2 directory: a BPF link (BPF_LINK_CREATE, the default), or
BPF_PROG_ATTACH with the attach flags the user asks for.

Kernel rules (kernel/bpf/cgroup.c, ``__cgroup_bpf_attach`` and ``find_detach_entry``):

- each (cgroup, attach type) hook has one mode, set by its first program: none (one
  program; a second BPF_PROG_ATTACH *replaces* it), ``BPF_F_ALLOW_OVERRIDE`` (one program,
  which a sub-cgroup's program overrides) or ``BPF_F_ALLOW_MULTI`` (a list, run in order;
  BPF links always join in this mode).  An attach in another mode fails with EPERM;
  OVERRIDE with MULTI, or REPLACE without MULTI, is EINVAL;
- BPF_PROG_DETACH in none/override mode removes whatever program is there, whatever fd
  was given; in multi mode exactly the program given;
- ordering (``BPF_F_BEFORE``/``BPF_F_AFTER``, ``expected_revision``: the cgroup mprog
  API): a program is placed relative to a program attached with BPF_PROG_ATTACH, a link
  relative to a link (``BPF_F_LINK``), never one relative to the other (EINVAL).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..errors import ClosedError, Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.attrs import ProgInfo
from ..kernel.link_attrs import LinkCreateAttr, ProgAttachAttr, ProgQueryAttr
from ..kernel.constants import (BPF_F_AFTER, BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE, BPF_F_BEFORE, BPF_F_ID,
                                BPF_F_LINK, BPF_F_REPLACE, AttachType, Cmd, ProgType)
from ..resource import deferred_signals
from .base import Link, LinkInfo, _fd_link

#: ``flags=`` by name, as bpftool's ``cgroup attach`` says them
ATTACH_MODES = {"none": 0, "override": BPF_F_ALLOW_OVERRIDE, "multi": BPF_F_ALLOW_MULTI}

# flags pybpf sets itself from before=/after=/first=/replace=, not accepted in flags=
_PLACEMENT_FLAGS = BPF_F_REPLACE | BPF_F_BEFORE | BPF_F_AFTER | BPF_F_ID | BPF_F_LINK

# program types the kernel attaches to cgroups (bpf_prog_attach_check_attach_type, link_create)
_CGROUP_PROG_TYPES = frozenset({
    ProgType.CGROUP_SKB, ProgType.CGROUP_SOCK, ProgType.SOCK_OPS, ProgType.CGROUP_DEVICE,
    ProgType.CGROUP_SOCK_ADDR, ProgType.CGROUP_SYSCTL, ProgType.CGROUP_SOCKOPT, ProgType.LSM,
})

# short names of attach types (bpftool's), accepted by attach_type=
_SHORT_NAMES = {
    "ingress": AttachType.CGROUP_INET_INGRESS, "egress": AttachType.CGROUP_INET_EGRESS,
    "sock_create": AttachType.CGROUP_INET_SOCK_CREATE, "sock_release": AttachType.CGROUP_INET_SOCK_RELEASE,
    "sock_ops": AttachType.CGROUP_SOCK_OPS, "sockops": AttachType.CGROUP_SOCK_OPS,
    "device": AttachType.CGROUP_DEVICE, "dev": AttachType.CGROUP_DEVICE,
    "bind4": AttachType.CGROUP_INET4_BIND, "bind6": AttachType.CGROUP_INET6_BIND,
    "post_bind4": AttachType.CGROUP_INET4_POST_BIND, "post_bind6": AttachType.CGROUP_INET6_POST_BIND,
    "connect4": AttachType.CGROUP_INET4_CONNECT, "connect6": AttachType.CGROUP_INET6_CONNECT,
    "connect_unix": AttachType.CGROUP_UNIX_CONNECT,
    "sendmsg4": AttachType.CGROUP_UDP4_SENDMSG, "sendmsg6": AttachType.CGROUP_UDP6_SENDMSG,
    "sendmsg_unix": AttachType.CGROUP_UNIX_SENDMSG,
    "recvmsg4": AttachType.CGROUP_UDP4_RECVMSG, "recvmsg6": AttachType.CGROUP_UDP6_RECVMSG,
    "recvmsg_unix": AttachType.CGROUP_UNIX_RECVMSG,
    "getpeername4": AttachType.CGROUP_INET4_GETPEERNAME, "getpeername6": AttachType.CGROUP_INET6_GETPEERNAME,
    "getpeername_unix": AttachType.CGROUP_UNIX_GETPEERNAME,
    "getsockname4": AttachType.CGROUP_INET4_GETSOCKNAME, "getsockname6": AttachType.CGROUP_INET6_GETSOCKNAME,
    "getsockname_unix": AttachType.CGROUP_UNIX_GETSOCKNAME,
    "sysctl": AttachType.CGROUP_SYSCTL, "getsockopt": AttachType.CGROUP_GETSOCKOPT,
    "setsockopt": AttachType.CGROUP_SETSOCKOPT, "lsm_cgroup": AttachType.LSM_CGROUP,
}


def _mode_name(flags: int) -> str:
    if flags & BPF_F_ALLOW_MULTI:
        return "multi"
    return "override" if flags & BPF_F_ALLOW_OVERRIDE else "none"


def _attach_type_name(attach_type: int) -> str:
    try:
        return AttachType(attach_type).name
    except ValueError:
        return str(attach_type)


def parse_attach_type(value) -> int:
    """An attach type from an :class:`AttachType`, an int, or a name: ``"CGROUP_INET_INGRESS"``,
    ``"BPF_CGROUP_INET_INGRESS"`` (any case) or bpftool's short name (``"ingress"``,
    ``"connect4"``, ``"sock_ops"``...)."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _SHORT_NAMES:
            return _SHORT_NAMES[key]
        name = key.upper().removeprefix("BPF_")
        if name in AttachType.__members__:
            return AttachType[name]
    raise Error(f"unknown cgroup attach type {value!r}: give an AttachType, or a name such as 'ingress', "
                f"'egress', 'connect4', 'sock_ops' or 'CGROUP_INET_INGRESS'")


def _parse_flags(flags) -> int:
    if isinstance(flags, str):
        try:
            return ATTACH_MODES[flags.strip().lower()]
        except KeyError:
            raise Error(f"unknown cgroup attach mode {flags!r}: use one of {', '.join(ATTACH_MODES)}, or "
                        f"BPF_F_ALLOW_MULTI / BPF_F_ALLOW_OVERRIDE (pybpf.kernel.constants)") from None
    if isinstance(flags, int) and not isinstance(flags, bool) and flags >= 0:
        return flags
    raise Error(f"flags={flags!r}: give an attach mode ('none', 'override', 'multi') or an int of "
                f"BPF_F_* attach flags")


def _prog_id(fd: int) -> int:
    return sc.obj_get_info_by_fd(fd, ProgInfo()).id


# -- what the kernel has at a cgroup hook (BPF_PROG_QUERY) ---------------------------------------

class CgroupQuery:
    """The programs of one (cgroup, attach type) hook, as BPF_PROG_QUERY reports them:
    ``attach_flags`` (the hook's mode: 0, BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI),
    ``prog_ids`` in the order they run, and ``revision`` (the hook's change counter, 0 on
    kernels without the cgroup mprog API)."""

    __slots__ = ("attach_type", "attach_flags", "prog_ids", "revision")

    def __init__(self, attach_type: int, attach_flags: int, prog_ids: list, revision: int):
        self.attach_type, self.attach_flags, self.prog_ids, self.revision = \
            attach_type, attach_flags, prog_ids, revision

    @property
    def mode(self) -> str:
        """``"none"``, ``"override"`` or ``"multi"`` (``"none"`` also when nothing is attached)."""
        return _mode_name(self.attach_flags)

    def __repr__(self) -> str:
        return (f"CgroupQuery({_attach_type_name(self.attach_type)}, mode={self.mode}, prog_ids={self.prog_ids}, "
                f"revision={self.revision})")


def _query_fd(fd: int, attach_type: int, effective: bool = False) -> CgroupQuery:
    cap = 64                                          # BPF_CGROUP_MAX_PROGS
    while True:
        ids = (ctypes.c_uint32 * cap)()
        attr = ProgQueryAttr(target_fd=fd, attach_type=attach_type, query_flags=1 if effective else 0,
                             prog_ids=ctypes.addressof(ids), prog_cnt=cap)
        try:
            sc.bpf(Cmd.PROG_QUERY, attr)
        except SyscallError as e:
            if e.errno == _errno.ENOSPC and cap < 4096:   # effective lists include the parents' programs
                cap *= 4
                continue
            raise type(e)(e.command, e.errno, f"cannot query the cgroup's {_attach_type_name(attach_type)} "
                                              f"programs") from None
        return CgroupQuery(attach_type, attr.attach_flags, list(ids[:attr.prog_cnt]), attr.revision)


def query_cgroup(cgroup, attach_type, effective: bool = False) -> CgroupQuery:
    """The programs attached to ``cgroup`` (a cgroup v2 path or an open fd) for
    ``attach_type``; ``effective=True``: those that run there, its parents' included."""
    attach_type = parse_attach_type(attach_type)
    if isinstance(cgroup, int):
        return _query_fd(cgroup, attach_type, effective)
    fd = _open_cgroup(cgroup)
    try:
        return _query_fd(fd, attach_type, effective)
    finally:
        os.close(fd)


def _open_cgroup(cgroup) -> int:
    try:
        return os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise Error(f"cannot open cgroup {os.fspath(cgroup)!r}: {e.strerror} (give a cgroup v2 directory, e.g. "
                    f"one made with mkdir under {_mount_hint()})") from None


def _mount_hint() -> str:
    try:
        return cgroup2_mount()
    except NotSupportedError:
        return "the cgroup v2 mount"


# -- the cgroup mprog API (ordering, revisions) -------------------------------------------------

_mprog: list = []


def _has_cgroup_mprog() -> bool:
    """Whether this kernel orders cgroup programs (BPF_F_BEFORE/AFTER, expected_revision):
    its BTF's ``union bpf_attr`` has ``link_create.cgroup`` (added with the cgroup mprog API).
    Without BTF to tell, the kernel is left to judge."""
    if not _mprog:
        from ..kernel.btf import vmlinux_btf
        from ..spec.btf import Kind
        found = True
        try:
            btf = vmlinux_btf()
            union = next((t for t in btf.by_name("bpf_attr") if t.kind == Kind.UNION), None)
            if union is not None:
                found = _has_member(btf, union, ["link_create", "cgroup"], 0)
        except Error:
            pass
        _mprog.append(found)
    return _mprog[0]


def _has_member(btf, t, path: list, depth: int) -> bool:
    """``t`` has the member chain ``path``; anonymous struct/union members are looked through."""
    from ..spec.btf import Kind
    if depth > 8:
        return False
    for m in t.members:
        mt = btf.resolve(m.type_id)
        if mt is None or mt.kind not in (Kind.STRUCT, Kind.UNION):
            if m.name == path[0] and len(path) == 1:
                return True
            continue
        if m.name == path[0]:
            if len(path) == 1 or _has_member(btf, mt, path[1:], depth + 1):
                return True
        elif not m.name and _has_member(btf, mt, path, depth + 1):
            return True
    return False


# the Linux release that brought each cgroup attach type, for the message when the running
# kernel's BTF has no such BPF_<type> (the check itself reads the BTF, never the version)
_SINCE = {
    AttachType.CGROUP_INET_INGRESS: "4.10", AttachType.CGROUP_INET_EGRESS: "4.10",
    AttachType.CGROUP_INET_SOCK_CREATE: "4.10", AttachType.CGROUP_SOCK_OPS: "4.13",
    AttachType.CGROUP_DEVICE: "4.15", AttachType.CGROUP_INET4_BIND: "4.17", AttachType.CGROUP_INET6_BIND: "4.17",
    AttachType.CGROUP_INET4_CONNECT: "4.17", AttachType.CGROUP_INET6_CONNECT: "4.17",
    AttachType.CGROUP_INET4_POST_BIND: "4.17", AttachType.CGROUP_INET6_POST_BIND: "4.17",
    AttachType.CGROUP_UDP4_SENDMSG: "4.18", AttachType.CGROUP_UDP6_SENDMSG: "4.18",
    AttachType.CGROUP_SYSCTL: "5.2", AttachType.CGROUP_UDP4_RECVMSG: "5.2", AttachType.CGROUP_UDP6_RECVMSG: "5.2",
    AttachType.CGROUP_GETSOCKOPT: "5.3", AttachType.CGROUP_SETSOCKOPT: "5.3",
    AttachType.CGROUP_INET4_GETPEERNAME: "5.8", AttachType.CGROUP_INET6_GETPEERNAME: "5.8",
    AttachType.CGROUP_INET4_GETSOCKNAME: "5.8", AttachType.CGROUP_INET6_GETSOCKNAME: "5.8",
    AttachType.CGROUP_INET_SOCK_RELEASE: "5.9", AttachType.LSM_CGROUP: "6.0",
    AttachType.CGROUP_UNIX_CONNECT: "6.7", AttachType.CGROUP_UNIX_SENDMSG: "6.7",
    AttachType.CGROUP_UNIX_RECVMSG: "6.7", AttachType.CGROUP_UNIX_GETPEERNAME: "6.7",
    AttachType.CGROUP_UNIX_GETSOCKNAME: "6.7",
}


def _kernel_enum(enum: str) -> set | None:
    """The member names of ``enum`` in the running kernel's BTF (None without BTF to tell)."""
    from ..kernel.btf import vmlinux_btf
    from ..spec.btf import Kind
    try:
        btf = vmlinux_btf()
    except Error:
        return None
    for t in btf.by_name(enum):
        if t.kind in (Kind.ENUM, Kind.ENUM64):
            return {v.name for v in t.values}
    return None


def missing_attach_type(attach_type: int, known: set | None) -> NotSupportedError | None:
    """The NotSupportedError for a cgroup attach type the kernel does not know (``known``: the
    names of its enum bpf_attach_type), or None."""
    name = f"BPF_{_attach_type_name(attach_type)}"
    if known is None or name in known:
        return None
    since = _SINCE.get(attach_type)
    return NotSupportedError(f"this kernel has no {name} (not in its BTF's enum bpf_attach_type)"
                             + (f": Linux {since} brought it" if since else ""))


def _require_link_type() -> None:
    known = _kernel_enum("bpf_link_type")
    if known is not None and "BPF_LINK_TYPE_CGROUP" not in known:
        raise NotSupportedError("this kernel has no cgroup BPF links (BPF_LINK_TYPE_CGROUP is not in its BTF's "
                                "enum bpf_link_type; Linux 5.7 brought them): attach with flags='multi' "
                                "(BPF_PROG_ATTACH) instead")


def _require_mprog(what: str) -> None:
    if not _has_cgroup_mprog():
        raise NotSupportedError(
            f"{what} needs the cgroup multi-program API (BPF_F_BEFORE/BPF_F_AFTER and expected_revision for "
            f"cgroups), which this kernel lacks: its BTF has no link_create.cgroup in union bpf_attr (Linux 6.17 "
            f"brought it). Attach without before=/after=/first=/expected_revision=: programs then run in the "
            f"order they were attached")


# -- attach ---------------------------------------------------------------------------------------

def attach_cgroup(program, cgroup, *, flags=None, attach_type=None, before=None, after=None,
                  first: bool = False, replace=None, expected_revision: int | None = None) -> Link:
    """Attach a cgroup program (cgroup_skb/ingress, cgroup/connect4, sockops, cgroup/dev...) to
    ``cgroup``, a cgroup v2 directory (a path, or an open fd of one).

    Without ``flags`` the attachment is a BPF link (BPF_LINK_CREATE): it joins the hook's
    program list, ``info()``, ``update()`` and ``detach()`` work, and closing it (or the end of
    the process) detaches it.  With ``flags`` it is BPF_PROG_ATTACH in that mode: ``"multi"``
    (BPF_F_ALLOW_MULTI), ``"override"`` (BPF_F_ALLOW_OVERRIDE), ``"none"`` (0: the only program
    of the hook), or an int of BPF_F_* flags; such an attachment outlives the process, so
    ``close()`` detaches exactly its program (BPF_PROG_DETACH).

    ``attach_type``: for sections that do not say it (``cgroup/skb``): ``"ingress"``...
    ``before``/``after``: run before/after that attachment (a Link for BPF links, a Program or
    its BPF_PROG_ATTACH Link otherwise); ``first=True``: before every other.  ``replace``: with
    flags, the Program (or Link) this one takes the place of.  ``expected_revision``: fail
    (ESTALE) unless the hook is at this revision (:func:`query_cgroup`)."""
    if program.type not in _CGROUP_PROG_TYPES:
        raise Error(f"program {program.name!r} (section {program.section!r}) is a {program.type.name} program, "
                    f"not a cgroup program: cgroup sections are cgroup_skb/..., cgroup/..., sockops")
    atype = _resolve_attach_type(program, attach_type)
    missing = missing_attach_type(atype, _kernel_enum("bpf_attach_type"))
    if missing is not None:
        raise missing
    if before is not None and after is not None:
        raise Error("give before= or after=, not both")
    if first and (before is not None or after is not None):
        raise Error("first=True places the program before every other: leave out before=/after=")
    ordering = before is not None or after is not None or first or expected_revision is not None
    if ordering:
        _require_mprog("ordering cgroup programs")
    target = str(cgroup) if isinstance(cgroup, int) else os.fspath(cgroup)
    if flags is None:
        if replace is not None:
            raise Error("replace= is for BPF_PROG_ATTACH (give flags='multi'); a BPF link swaps its program "
                        "with link.update(program)")
        _require_link_type()
        return _attach_link(program, cgroup, target, atype, before, after, first, expected_revision)
    return _attach_prog(program, cgroup, target, atype, _parse_flags(flags), before, after, first, replace,
                        expected_revision)


def _resolve_attach_type(program, attach_type) -> int:
    expected = program.spec.expected_attach_type
    if attach_type is None:
        if expected is None:
            raise Error(f"program {program.name!r} (section {program.section!r}) has no attach type: give "
                        f"attach_type= (e.g. 'ingress' or 'egress'), or use a section such as cgroup_skb/ingress "
                        f"or cgroup_skb/egress")
        return expected
    atype = parse_attach_type(attach_type)
    if expected is not None and atype != expected:
        raise Error(f"program {program.name!r} was loaded for {_attach_type_name(expected)} (section "
                    f"{program.section!r}); the kernel attaches it there only, not at {_attach_type_name(atype)}")
    return atype


def _relative(rel, for_link: bool, program) -> tuple[int, int]:
    """(flags, relative_fd) for before=/after=: a link is placed relative to a link, a program
    attached with BPF_PROG_ATTACH relative to such a program (kernel/bpf/cgroup.c get_prog_list)."""
    if isinstance(rel, Link):
        if for_link:
            if not rel._bpf_link or rel.kind != "cgroup":
                raise Error(f"{rel!r} is not a cgroup BPF link: a BPF link is placed relative to another "
                            f"cgroup link of the same hook")
            return BPF_F_LINK, rel.fd
        if not isinstance(rel, CgroupAttachment):
            raise Error(f"{rel!r} is a BPF link: a program attached with flags= is placed relative to another "
                        f"program attached with flags= (the kernel orders links among links, programs among "
                        f"programs)")
        return 0, rel._prog_fd
    if for_link:
        raise Error(f"a BPF link is placed relative to another cgroup link (give the Link that "
                    f"attach_cgroup() returned, not {rel!r}); to order programs among programs, attach "
                    f"with flags='multi'")
    try:
        return 0, rel.fd
    except AttributeError:
        raise Error(f"before=/after= takes a Program or the Link attach_cgroup() returned, not {rel!r}") from None


def _placement(before, after, first, for_link: bool, program) -> tuple[int, int]:
    rel = before if before is not None else after
    flags = BPF_F_BEFORE if (before is not None or first) else (BPF_F_AFTER if after is not None else 0)
    fd = 0
    if rel is not None:
        more, fd = _relative(rel, for_link, program)
        flags |= more
    return flags, fd


def _attach_error(e: SyscallError, program, target: str, atype: int, fd: int | None, what: str):
    hint = ""
    if e.errno == _errno.EPERM:
        hint = _mode_hint(fd, atype)
    elif e.errno == _errno.EBADF:
        hint = f" ({target!r} is not a cgroup v2 directory; cgroup v2 is mounted at {_mount_hint()})"
    elif e.errno == _errno.EINVAL:
        hint = (f" (the program type and its expected attach type must fit {_attach_type_name(atype)}; "
                f"ordering needs a relative of the same kind, and a program is attached once per hook)")
    elif e.errno == _errno.ENOENT:
        hint = " (the program or link to be placed relative to, or replaced, is not attached at this hook)"
    elif e.errno == _errno.ESTALE:
        hint = " (the hook changed since expected_revision: query_cgroup() gives its revision now)"
    elif e.errno == _errno.E2BIG:
        hint = " (a cgroup hook holds at most 64 programs)"
    return type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to cgroup {target!r} as "
                                       f"{_attach_type_name(atype)}{what}{hint}")


def _mode_hint(fd: int | None, atype: int) -> str:
    if fd is None:
        return ""
    try:
        q = _query_fd(fd, atype)
    except Error:
        return ""
    if q.prog_ids:
        return (f" (the hook holds program ids {q.prog_ids} attached in mode {q.mode!r}: the kernel refuses "
                f"an attach in another mode, and links need mode 'multi'; a parent cgroup with a program "
                f"attached in mode 'none' also refuses any below it)")
    return (" (a parent cgroup has a program attached in mode 'none' (no flags), which allows no program in "
            "the cgroups below it)")


def _attach_link(program, cgroup, target, atype, before, after, first, expected_revision) -> Link:
    mflags, rel_fd = _placement(before, after, first, True, program)

    def make() -> int:
        fd = os.dup(cgroup) if isinstance(cgroup, int) else _open_cgroup(cgroup)
        try:
            attr = LinkCreateAttr(prog_fd=program.fd, target_fd=fd, attach_type=atype, flags=mflags)
            attr.cgroup.relative_fd = rel_fd
            attr.cgroup.expected_revision = expected_revision or 0
            try:
                return sc.bpf(Cmd.LINK_CREATE, attr)
            except SyscallError as e:
                raise _attach_error(e, program, target, atype, fd, "") from None
        finally:
            os.close(fd)
    return _fd_link(program, "cgroup", target, make)


def _attach_prog(program, cgroup, target, atype, flags, before, after, first, replace,
                 expected_revision) -> "CgroupAttachment":
    if flags & _PLACEMENT_FLAGS:
        raise Error("flags= takes the attach mode (BPF_F_ALLOW_MULTI or BPF_F_ALLOW_OVERRIDE, and other mode "
                    "bits); pybpf sets BPF_F_REPLACE/BEFORE/AFTER/ID/LINK from replace=, before=, after= "
                    "and first=")
    if flags & BPF_F_ALLOW_MULTI and flags & BPF_F_ALLOW_OVERRIDE:
        raise Error("flags: BPF_F_ALLOW_MULTI and BPF_F_ALLOW_OVERRIDE exclude each other (a hook is either a "
                    "list of programs or one overridable program)")
    multi = bool(flags & BPF_F_ALLOW_MULTI)
    if not multi and (before is not None or after is not None or first):
        raise Error("before=/after=/first= order the programs of a hook in mode 'multi': give flags='multi'")
    pflags, rel_fd = _placement(before, after, first, False, program)
    replace_fd = None
    if replace is not None:
        if isinstance(replace, Link) and not isinstance(replace, CgroupAttachment):
            raise Error(f"replace= takes a Program or a Link attached with flags=; {replace!r} is a BPF link "
                        f"(swap its program with link.update())")
        replace_fd = replace._prog_fd if isinstance(replace, CgroupAttachment) else replace.fd
    with deferred_signals() as section:
        cfd = os.dup(cgroup) if isinstance(cgroup, int) else _open_cgroup(cgroup)
        try:
            pfd = os.dup(program.fd)
        except BaseException:
            os.close(cfd)
            raise
        # the attachment owns both fds from here on: its close() detaches and closes them
        link = CgroupAttachment(program, target, cfd, pfd, atype, flags)
        section.on_interrupt(link)
        try:
            if not multi:
                _check_single(link, replace_fd)
            attr = ProgAttachAttr(target_fd=cfd, attach_bpf_fd=pfd, attach_type=atype, attach_flags=flags | pflags,
                                  relative_fd=rel_fd, expected_revision=expected_revision or 0)
            if multi and replace_fd is not None:
                attr.attach_flags |= BPF_F_REPLACE
                attr.replace_bpf_fd = replace_fd
            try:
                sc.bpf(Cmd.PROG_ATTACH, attr)
            except SyscallError as e:
                raise _attach_error(e, program, target, atype, cfd, f" (BPF_PROG_ATTACH, mode "
                                                                    f"{_mode_name(flags)!r})") from None
            link._attached = True
        except BaseException:
            link.close()
            raise
    if isinstance(replace, CgroupAttachment):
        replace._attached = False       # the kernel took its program off the hook
    return link


def _check_single(link: "CgroupAttachment", replace_fd: int | None) -> None:
    """In mode 'none'/'override' BPF_PROG_ATTACH replaces the hook's program without a word:
    refuse that unless replace= names the program there."""
    q = _query_fd(link._fds[0], link.attach_type)
    if not q.prog_ids or q.attach_flags != link.attach_flags:
        return                          # empty, or the kernel refuses the mode change itself (EPERM)
    if replace_fd is not None and q.prog_ids == [_prog_id(replace_fd)]:
        return
    raise Error(f"cgroup {link.target!r} already has program id {q.prog_ids[0]} attached as "
                f"{_attach_type_name(link.attach_type)} in mode {q.mode!r}: an attach in that mode would replace "
                f"it. Give replace=<that program> to replace it, or attach in mode 'multi' where the hook allows "
                f"a list")


class CgroupAttachment(Link):
    """A program attached to a cgroup with BPF_PROG_ATTACH (``attach_cgroup(..., flags=...)``).

    It owns a dup of the cgroup fd (``fd``) and of the program fd; ``close()`` detaches
    exactly its program (BPF_PROG_DETACH; in mode 'none'/'override', only if the hook still
    runs it: the kernel would detach whatever is there) and closes both.  ``update()``
    swaps the program in place, ``detach()`` detaches it now and ``info()`` reports the
    hook (id 0 and type None: this is no BPF link)."""

    def __init__(self, program, target: str, cgroup_fd: int, prog_fd: int, attach_type: int, attach_flags: int):
        super().__init__(program, "cgroup", target, [cgroup_fd, prog_fd], bpf_link=False)
        self.attach_type = attach_type
        self.attach_flags = attach_flags
        self._attached = False

    @property
    def _prog_fd(self) -> int:
        if len(self._fds) < 2:
            raise ClosedError(f"link {self.kind}:{self.target} is closed")
        return self._fds[1]

    @property
    def mode(self) -> str:
        """The hook's mode this program was attached in: ``"none"``, ``"override"`` or ``"multi"``."""
        return _mode_name(self.attach_flags)

    @property
    def attached(self) -> bool:
        """Whether the program is still on the hook (False after detach(), close(), or when
        another attach replaced it)."""
        if not self._attached or self.closed:
            return False
        try:
            return _prog_id(self._prog_fd) in _query_fd(self._fds[0], self.attach_type).prog_ids
        except Error:
            return False

    def _detach(self) -> None:
        if not self._attached:
            return
        cfd, pfd = self._fds[0], self._fds[1]
        if not self.attach_flags & BPF_F_ALLOW_MULTI:
            # find_detach_entry: without ALLOW_MULTI the kernel detaches the hook's program,
            # whichever it is; leave a program another attach put there in place
            try:
                q = _query_fd(cfd, self.attach_type)
            except Error:
                q = None
            if q is not None and _prog_id(pfd) not in q.prog_ids:
                self._attached = False
                return
        try:
            sc.bpf(Cmd.PROG_DETACH, ProgAttachAttr(target_fd=cfd, attach_bpf_fd=pfd, attach_type=self.attach_type))
        except SyscallError as e:
            if e.errno != _errno.ENOENT:          # ENOENT: not there any more (replaced, or the cgroup is gone)
                raise type(e)(e.command, e.errno, f"program {self.program.name!r}: cannot detach from cgroup "
                                                  f"{self.target!r} ({_attach_type_name(self.attach_type)})") from None
        self._attached = False

    def close(self) -> None:
        """Detach the program (BPF_PROG_DETACH of exactly this program), then close the fds.
        Idempotent.  If the detach fails (other than "no longer attached"), the fds stay and
        the error is raised, so that a second close() can try again."""
        with deferred_signals():
            if self._fds:
                self._detach()
            super().close()

    def detach(self) -> None:
        """Detach the program now (BPF_PROG_DETACH); ``close()`` still closes the fds."""
        if self.closed:
            raise ClosedError(f"link {self.kind}:{self.target} is closed")
        self._detach()

    def update(self, program, *, old=None) -> None:
        """Put ``program`` on the hook in this program's place, with no moment without either:
        BPF_PROG_ATTACH with BPF_F_REPLACE in mode 'multi', a plain attach (which replaces)
        otherwise.  ``old``: fail unless this attachment still runs that program."""
        if self.closed:
            raise ClosedError(f"link {self.kind}:{self.target} is closed")
        if not self._attached:
            raise Error(f"link {self.kind}:{self.target} is detached: attach {program.name!r} anew")
        if old is not None and _prog_id(old.fd) != _prog_id(self._prog_fd):
            raise Error(f"link {self.kind}:{self.target} no longer runs {old.name!r} (it runs "
                        f"{self.program.name!r})")
        cfd, old_fd = self._fds[0], self._prog_fd
        multi = bool(self.attach_flags & BPF_F_ALLOW_MULTI)
        if not multi and _prog_id(old_fd) not in _query_fd(cfd, self.attach_type).prog_ids:
            self._attached = False
            raise Error(f"link {self.kind}:{self.target}: another attach replaced {self.program.name!r} on the "
                        f"hook; not replacing that one")
        attr = ProgAttachAttr(target_fd=cfd, attach_type=self.attach_type, attach_flags=self.attach_flags)
        with deferred_signals():
            new_fd = os.dup(program.fd)
            try:
                attr.attach_bpf_fd = new_fd
                if multi:
                    attr.attach_flags |= BPF_F_REPLACE
                    attr.replace_bpf_fd = old_fd
                try:
                    sc.bpf(Cmd.PROG_ATTACH, attr)
                except SyscallError as e:
                    raise type(e)(e.command, e.errno, f"link {self.kind}:{self.target}: cannot swap in program "
                                                      f"{program.name!r} (it must have the type and attach type "
                                                      f"of {self.program.name!r})") from None
            except BaseException:
                os.close(new_fd)
                raise
            self._fds[1] = new_fd
            os.close(old_fd)
        self.program = program

    def info(self) -> LinkInfo:
        """The hook as the kernel reports it (BPF_PROG_QUERY): ``prog_id`` (0 once detached),
        ``cgroup_id``, ``attach_type`` and ``attach_flags``; ``id`` 0 and ``type`` None, as
        this is no BPF link."""
        if self.closed:
            raise ClosedError(f"link {self.kind}:{self.target} is closed")
        cfd = self._fds[0]
        ours = _prog_id(self._prog_fd)
        q = _query_fd(cfd, self.attach_type)
        return LinkInfo(0, None, ours if self._attached and ours in q.prog_ids else 0,
                        {"cgroup_id": os.fstat(cfd).st_ino, "attach_type": AttachType(self.attach_type),
                         "attach_flags": q.attach_flags})

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("attached" if self._attached else "detached")
        return (f"<CgroupAttachment {self.program.name} {_attach_type_name(self.attach_type)} on {self.target} "
                f"mode={self.mode} {state}>")


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` on a unified system,
    ``/sys/fs/cgroup/unified`` in hybrid mode), from /proc/self/mounts.  BPF cgroup
    programs attach to cgroup v2 directories only."""
    found = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    found.append(fields[1].replace("\\040", " "))
    except OSError:
        pass
    if not found:
        raise NotSupportedError("no cgroup v2 hierarchy is mounted (cgroup programs attach to cgroup v2 "
                                "directories): mount one with 'mount -t cgroup2 none /sys/fs/cgroup'")
    return min(found, key=len)
