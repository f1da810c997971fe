"""BPF links of tracing programs: raw tracepoints (BPF_RAW_TRACEPOINT_OPEN) and
tp_btf/fentry/fexit/fmod_ret/lsm programs on their attach_btf_id (BPF_LINK_CREATE)."""

from __future__ import annotations

import ctypes
import errno as _errno

from ..errors import Error, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr, RawTracepointOpenAttr
from ..kernel.constants import Cmd
from .base import Link, _fd_link


def attach_raw_tracepoint(program, target: str, cookie: int | None = None) -> Link:
    """Attach to raw tracepoint ``target`` (e.g. ``sys_enter``); ``cookie``: what
    bpf_get_attach_cookie() returns (raw_tracepoint.cookie, Linux 6.10)."""
    if not target:
        raise Error(f"program {program.name!r}: raw tracepoint needs a name (SEC(\"raw_tp/<name>\"))")
    name = ctypes.create_string_buffer(target.encode())
    attr = RawTracepointOpenAttr(name=ctypes.addressof(name), prog_fd=program.fd, cookie=cookie or 0)

    def make() -> int:
        try:
            return sc.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr)
        except SyscallError as e:
            hint = " (no such raw tracepoint in this kernel)" if e.errno == _errno.ENOENT else ""
            raise type(e)(e.command, e.errno,
                          f"program {program.name!r}: cannot attach to raw tracepoint {target!r}{hint}") from None
    return _fd_link(program, "raw_tracepoint", target, make)


def attach_trace(program, target: str | None = None, cookie: int | None = None) -> Link:
    """Attach a tp_btf, fentry, fexit, fmod_ret or lsm program to what it was loaded for
    (its attach_btf_id): BPF_LINK_CREATE with its expected attach type, or
    BPF_RAW_TRACEPOINT_OPEN without a name on kernels before BPF links for tracing (5.8).
    ``cookie``: link_create.tracing.cookie (the caller checks the kernel takes one)."""
    spec = program.spec
    if target and target != spec.attach_target:
        raise Error(f"program {program.name!r} was loaded for {spec.attach_target!r} (its attach_btf_id is "
                    f"fixed at load); to attach it to {target!r} set spec.programs[{program.name!r}].attach_target "
                    f"before loading")
    attach_type = spec.expected_attach_type

    def make() -> int:
        try:
            attr = LinkCreateAttr(prog_fd=program.fd, target_fd=0, attach_type=attach_type)
            attr.tracing.cookie = cookie or 0
            return sc.bpf(Cmd.LINK_CREATE, attr)
        except SyscallError as e:
            if e.errno != _errno.EINVAL or cookie:
                raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to "
                                                  f"{spec.attach_target!r}") from None
            attr = RawTracepointOpenAttr(name=0, prog_fd=program.fd)
            try:
                return sc.bpf(Cmd.RAW_TRACEPOINT_OPEN, attr)
            except SyscallError:
                raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to "
                                                  f"{spec.attach_target!r}") from None
    return _fd_link(program, spec.sec_def.attach, spec.attach_target, make)
