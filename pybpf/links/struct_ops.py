"""Registering struct_ops maps (``obj.maps[NAME].attach_struct_ops()``).

A ``.struct_ops`` map is registered by writing its value (BPF_MAP_UPDATE_ELEM, key 0:
bpf_struct_ops_map_update_elem calls the struct's ``reg``) and unregistered by
BPF_MAP_DELETE_ELEM.  A ``.struct_ops.link`` map (BPF_F_LINK) only becomes ready with its
value; BPF_LINK_CREATE (attach type BPF_STRUCT_OPS, ``map_fd``) registers it and closing the
link unregisters it; BPF_LINK_UPDATE with ``new_map_fd`` swaps in another ready map of the
same struct type (bpf_struct_ops_map_link_update; for tcp_congestion_ops the new one must
carry the same algorithm name: tcp_update_congestion_control).
"""

from __future__ import annotations

import errno as _errno
import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr, LinkUpdateAttr
from ..kernel.constants import BPF_F_LINK, BPF_F_REPLACE, AttachType, Cmd
from ..resource import deferred_signals
from .base import Link

_ENOTSUPP = 524      # the kernel's internal "not supported" (bpf_struct_ops_prepare_trampoline)
_KEY0 = bytes(4)


def _layout(map):
    lay = getattr(map, "_struct_ops", None)
    if lay is None:
        raise Error(f"map {map.name!r} is not a struct_ops map of a loaded object (declare it as a struct "
                    f"variable in SEC(\".struct_ops\") or SEC(\".struct_ops.link\"))")
    return lay


def _prepare(map, register: bool) -> None:
    """Write ``map``'s value (program fds in the function pointers) once: for a
    ``.struct_ops`` map this registers it, for a ``.struct_ops.link`` map it makes it ready."""
    lay = _layout(map)
    if getattr(map, "_struct_ops_written", False):
        if register:
            raise Error(f"struct_ops map {map.name!r} was registered already: the kernel takes its value "
                        f"once (close the first registration, load the object again to register again)")
        return
    owner = map._owner
    missing = [p for _, _, p in lay.funcs.values() if p not in owner.programs]
    if missing:
        raise Error(f"struct_ops map {map.name!r}: program{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)} {'are' if len(missing) > 1 else 'is'} not loaded (autoload off?)")
    value = lay.value({p: owner.programs[p].fd for _, _, p in lay.funcs.values()})
    try:
        sc.map_update_elem(map.fd, bytearray(_KEY0), value)
    except SyscallError as e:
        if e.errno in (_errno.EOPNOTSUPP, _ENOTSUPP):
            raise NotSupportedError(f"struct_ops map {map.name!r} (struct {lay.type_name}): this kernel cannot "
                                    f"register it: BPF_MAP_UPDATE_ELEM failed with {e.errno} (no BPF "
                                    f"trampolines for struct_ops on this architecture or kernel)") from None
        hint = ""
        if e.errno == _errno.EEXIST:
            hint = " (a struct_ops of that name is registered already, e.g. a tcp congestion control)"
        elif e.errno == _errno.EBUSY:
            hint = " (its value was written already)"
        raise type(e)(e.command, e.errno, f"struct_ops map {map.name!r} (struct {lay.type_name}): cannot "
                                          f"{'register' if register else 'prepare'} it{hint}") from None
    map._struct_ops_written = True


class StructOpsRegistration(Link):
    """A registered ``.struct_ops`` map (no BPF link): ``close()`` unregisters it
    (BPF_MAP_DELETE_ELEM).  Holds its own fd of the map, so it works after the object closes."""

    def __init__(self, map, fd: int):
        super().__init__(None, "struct_ops", map.name, [fd], bpf_link=False)
        self.map = map

    def close(self) -> None:
        """Unregister the struct_ops (BPF_MAP_DELETE_ELEM, key 0) and close the fd. Idempotent."""
        with deferred_signals():
            if self._fds:
                try:
                    sc.map_delete_elem(self._fds[0], bytearray(_KEY0))
                except SyscallError as e:
                    if e.errno != _errno.ENOENT:
                        raise type(e)(e.command, e.errno, f"struct_ops map {self.target!r}: cannot "
                                                          f"unregister it") from None
            super().close()

    def __repr__(self) -> str:
        return f"<StructOpsRegistration {self.target} {'closed' if self.closed else 'registered'}>"


class StructOpsLink(Link):
    """A ``.struct_ops.link`` map registered through a BPF link; ``update(map)`` swaps the
    map, ``close()`` unregisters."""

    def __init__(self, map, fd: int):
        super().__init__(None, "struct_ops", map.name, [fd])
        self.map = map

    def update(self, map, *, old=None) -> None:
        """Swap in struct_ops map ``map`` (BPF_LINK_UPDATE with new_map_fd): another
        ``.struct_ops.link`` map of the same struct type (for tcp_congestion_ops, with the same
        algorithm name).  ``old``: fail unless the link still runs that map."""
        lay = _layout(map)
        if not map.spec.flags & BPF_F_LINK:
            raise Error(f"struct_ops map {map.name!r} is in .struct_ops, not .struct_ops.link: only maps "
                        f"with BPF_F_LINK can be swapped into a link")
        if lay.type_id != self.map._struct_ops.type_id:
            raise Error(f"struct_ops map {map.name!r} is a struct {lay.type_name}, the link runs a struct "
                        f"{self.map._struct_ops.type_name}")
        _prepare(map, register=False)
        attr = LinkUpdateAttr(link_fd=self._link_fd("BPF_LINK_UPDATE"), new_map_fd=map.fd)
        if old is not None:
            attr.old_map_fd = old.fd
            attr.flags = BPF_F_REPLACE
        try:
            with deferred_signals():    # the swap and its record in one step: a Ctrl-C comes after both
                sc.bpf(Cmd.LINK_UPDATE, attr)
                self.map = map
                self.target = map.name
        except SyscallError as e:
            hint = ""
            if e.errno == _errno.EPERM and old is not None:
                hint = f" (the link no longer runs map {old.name!r})"
            elif e.errno == _errno.EINVAL:
                hint = " (the new map must be of the same struct type; a tcp congestion control must keep its name)"
            raise type(e)(e.command, e.errno, f"link struct_ops:{self.target}: cannot swap in map "
                                              f"{map.name!r}{hint}") from None

    def __repr__(self) -> str:
        return f"<StructOpsLink {self.target} {'closed' if self.closed else f'fd={self._fds[0]}'}>"


def attach_struct_ops(map) -> Link:
    """Register struct_ops map ``map``: a ``.struct_ops`` map with BPF_MAP_UPDATE_ELEM (a
    :class:`StructOpsRegistration`), a ``.struct_ops.link`` map through BPF_LINK_CREATE (a
    :class:`StructOpsLink`).  ``close()`` unregisters; the object tracks the result and closes it
    with itself."""
    lay = _layout(map)
    if map.spec.flags & BPF_F_LINK:
        _prepare(map, register=False)

        def make() -> int:
            attr = LinkCreateAttr(map_fd=map.fd, target_fd=0, attach_type=AttachType.STRUCT_OPS)
            try:
                return sc.bpf(Cmd.LINK_CREATE, attr)
            except SyscallError as e:
                hint = " (a struct_ops of that name is registered already)" if e.errno == _errno.EEXIST else ""
                if e.errno == _errno.EBUSY:
                    hint = " (the map is registered by another link)"
                raise type(e)(e.command, e.errno, f"struct_ops map {map.name!r} (struct {lay.type_name}): "
                                                  f"cannot register it through a BPF link{hint}") from None
        with deferred_signals() as section:
            link = StructOpsLink(map, make())
            section.on_interrupt(link)
    else:
        with deferred_signals() as section:
            link = StructOpsRegistration(map, os.dup(map.fd))
            section.on_interrupt(link)
            try:
                _prepare(map, register=True)
            except BaseException:
                # not registered: only the fd to give back
                Link.close(link)
                raise
    owner = getattr(map, "_owner", None)
    if owner is not None:
        owner._links.append(link)
    return link


__all__ = ["StructOpsLink", "StructOpsRegistration", "attach_struct_ops"]
