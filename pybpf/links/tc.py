"""tc (SCHED_CLS) programs on a network device's ingress or egress.

Two ways, both the kernel's own:

- tcx (kernel 6.6+): a BPF link made by BPF_LINK_CREATE with attach type
  BPF_TCX_INGRESS/BPF_TCX_EGRESS on the device's ifindex; it needs no qdisc, and
  several programs run in order (appended here, as libbpf does by default);
- legacy: a ``clsact`` qdisc and a direct-action ``cls_bpf`` filter made over
  rtnetlink (what ``tc qdisc add dev X clsact; tc filter add dev X ingress bpf da
  fd N`` does, and libbpf's ``bpf_tc_hook_create``/``bpf_tc_attach``), visible in
  ``tc filter show``.  The link deletes its filter on close, and the qdisc only if
  it made it and no other filter is left on it.

``attach_tc`` takes tcx where the kernel has it (its BTF lists BPF_LINK_TYPE_TCX),
else the legacy path; ``legacy=True`` forces the legacy path.
"""

from __future__ import annotations

import errno as _errno
import os
import threading

from ..errors import ClosedError, Error, NotSupportedError, SyscallError
from ..kernel import netlink as nl
from ..kernel import syscall as sc
from ..kernel.attrs import ProgInfo
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd, ProgType
from ..resource import deferred_signals
from .base import Link, _fd_link
from .xdp import kernel_has

DIRECTIONS = ("ingress", "egress")
_TCX_TYPES = {"ingress": AttachType.TCX_INGRESS, "egress": AttachType.TCX_EGRESS}


def attach_tc(program, iface, direction: str | None = "ingress", legacy: bool = False) -> Link:
    """Attach tc program ``program`` to ``iface`` (a name, looked up in the calling thread's
    network namespace, or an ifindex) at ``direction`` (``"ingress"`` or ``"egress"``).

    A tcx link where the kernel has tcx (6.6+), else, or with ``legacy=True``, a
    clsact qdisc (made only if the device has none) and a direct-action cls_bpf
    filter over netlink.  ``close()`` removes what it added.

    The direction is the one given, whatever the section says (``SEC("tc/egress")``
    attached with the default ``"ingress"`` runs at ingress: the kernel does not tie
    a SCHED_CLS program to a hook); ``direction=None`` takes it from a
    ``tc/egress``/``tcx/egress`` section, else ingress."""
    if program.type != ProgType.SCHED_CLS:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section "
                    f"{program.section!r}); attach_tc() needs a tc program (SEC(\"tc\"), "
                    f"SEC(\"tcx/ingress\")...)")
    if direction is None:
        direction = "egress" if program.spec.expected_attach_type == AttachType.TCX_EGRESS else "ingress"
    if direction not in DIRECTIONS:
        raise Error(f"tc direction {direction!r}: use 'ingress' or 'egress'")
    ifindex, label = nl.resolve_ifindex(iface)
    if not legacy:
        has_tcx = kernel_has("bpf_link_type", "BPF_LINK_TYPE_TCX")
        if has_tcx is not False:
            try:
                return _attach_tcx(program, ifindex, label, direction)
            except SyscallError as e:
                # without BTF to ask: a kernel before tcx refuses the attach type with EINVAL
                # (bpf_prog_attach_check_attach_type); take the netlink path then
                if has_tcx is not None or e.errno != _errno.EINVAL:
                    raise
    return _attach_legacy(program, ifindex, label, direction)


# -- tcx ------------------------------------------------------------------------------------------

def _attach_tcx(program, ifindex: int, label: str, direction: str) -> Link:
    attach_type = _TCX_TYPES[direction]

    def make() -> int:
        # flags 0, no relative: appended after the programs already there (mprog rules)
        attr = LinkCreateAttr(prog_fd=program.fd, target_ifindex=ifindex, attach_type=attach_type)
        try:
            return sc.bpf(Cmd.LINK_CREATE, attr)
        except SyscallError as e:
            hint = ""
            if e.errno == _errno.EEXIST:
                hint = f" (this program already runs at {label} {direction})"
            elif e.errno == _errno.ERANGE:
                hint = f" ({label} {direction} already runs the most programs tcx allows, 64)"
            elif e.errno == _errno.ENODEV:
                hint = f" (no device {label})"
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to {label} "
                                              f"{direction} (tcx){hint}") from None
    return _fd_link(program, "tcx", f"{label}:{direction}", make)


# -- legacy: clsact qdisc + cls_bpf filter over netlink ------------------------------------------

# clsact qdiscs this process made, by (network namespace, ifindex): how many of its live
# links use each.  The last one to close deletes it (if no one else's filter is on it),
# whichever link made it.
_our_qdiscs: dict = {}
_qdiscs_lock = threading.Lock()


def _netns_key() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


class TcFilterLink(Link):
    """A tc program attached as a direct-action cls_bpf filter (the legacy path).

    Attributes: ``ifindex``, ``direction``, ``handle`` and ``priority`` (as the kernel
    chose them: ``tc filter show`` lists ``pref PRIORITY ... handle 0xHANDLE``),
    ``created_qdisc`` (this link made the clsact qdisc).  The link owns a netlink
    socket of the device's network namespace, so closing it works from any namespace.

    ``close()`` deletes the filter, then the clsact qdisc if this process made it, no
    other of its links uses it and no other filter is on it.  ``update()`` swaps the
    filter's program in place (NLM_F_REPLACE; cls_bpf switches in one RCU step),
    ``detach()`` removes it now.  Not a BPF link: no ``info()``; ``filter()`` asks the
    kernel for the filter instead."""

    def __init__(self, program, target: str, sock: nl.RtNetlink, ifindex: int, direction: str,
                 made: nl.Filter, created_qdisc: bool, qdisc_key, shares_qdisc: bool):
        super().__init__(program, "tc", target, [], bpf_link=False)
        self._nl = sock
        self.ifindex = ifindex
        self.direction = direction
        self.parent = nl.clsact_parent(direction)
        self.handle = made.handle
        self.priority = made.priority
        self.created_qdisc = created_qdisc
        self._qdisc_key = qdisc_key
        self._holds_qdisc = shares_qdisc        # counted in _our_qdiscs
        self._filter_attached = True

    @property
    def closed(self) -> bool:
        return self._nl is None

    @property
    def fd(self) -> int:
        raise NotSupportedError(f"link tc:{self.target} is a cls_bpf filter made over netlink, not a "
                                f"BPF link: it has no link fd")

    def _sock(self) -> nl.RtNetlink:
        if self._nl is None:
            raise ClosedError(f"link tc:{self.target} is closed")
        return self._nl

    def filter(self) -> nl.Filter | None:
        """The filter as the kernel reports it now (RTM_GETTFILTER): ``prog_id``, ``name``,
        ``direct_action``...; None once it is gone."""
        for f in nl.filters(self._sock(), self.ifindex, self.parent):
            if f.handle == self.handle and f.priority == self.priority and f.kind == "bpf":
                return f
        return None

    def info(self):
        raise NotSupportedError(f"link tc:{self.target} is a cls_bpf filter made over netlink (the legacy "
                                f"tc path), not a BPF link: BPF_OBJ_GET_INFO_BY_FD has nothing to say; "
                                f"link.filter() reports the filter (prog_id, handle, priority)")

    def update(self, program, *, old=None) -> None:
        """Swap in ``program`` atomically: the same filter (handle, priority) runs it next."""
        sock = self._sock()
        if not self._filter_attached:
            raise Error(f"link tc:{self.target} is detached: there is no filter to swap the program of")
        if old is not None and old is not self.program:
            raise Error(f"link tc:{self.target} runs {self.program.name!r}, not {old.name!r}")
        _check_sched_cls(program)
        nl.add_bpf_filter(sock, self.ifindex, self.parent, program.fd, _filter_name(program),
                          priority=self.priority, handle=self.handle, replace=True,
                          what=f"swap the program of tc filter {self.target} for {program.name!r}")
        self.program = program

    def detach(self) -> None:
        """Remove the filter (and the qdisc, as ``close()`` would) now; ``close()`` then only
        closes the netlink socket."""
        self._remove(self._sock())

    def _remove(self, sock: nl.RtNetlink) -> None:
        if self._filter_attached:
            try:
                nl.del_bpf_filter(sock, self.ifindex, self.parent, self.handle, self.priority,
                                  what=f"delete tc filter {self.target} (pref {self.priority} handle "
                                       f"{self.handle:#x})")
            except SyscallError as e:
                # gone already: deleted by someone else, or with its qdisc or device
                # (ENOENT: no such filter or chain; EINVAL: no such qdisc/parent; ENODEV: no device)
                if e.errno not in (_errno.ENOENT, _errno.EINVAL, _errno.ENODEV):
                    raise
            self._filter_attached = False
        if self._holds_qdisc:
            with _qdiscs_lock:
                left = _our_qdiscs.get(self._qdisc_key, 0) - 1
                if left > 0:
                    _our_qdiscs[self._qdisc_key] = left
                else:
                    _our_qdiscs.pop(self._qdisc_key, None)
                self._holds_qdisc = False
                if left <= 0:
                    _delete_qdisc_if_empty(sock, self.ifindex, self.target)

    def close(self) -> None:
        """Delete the filter (and the qdisc if it is this process's and empty); close the
        socket.  Idempotent; a close that raised is finished by the next one."""
        with deferred_signals():
            if self._nl is None:
                return
            self._remove(self._nl)
            sock, self._nl = self._nl, None
            sock.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pref {self.priority} handle {self.handle:#x}"
        return f"<TcFilterLink {self.program.name} tc:{self.target} {state}>"


def _delete_qdisc_if_empty(sock: nl.RtNetlink, ifindex: int, target: str) -> None:
    """Delete the clsact qdisc unless a filter is on it: deleting it would take every
    filter of both directions with it (qdisc_destroy), others' too."""
    try:
        for direction in DIRECTIONS:
            if nl.filters(sock, ifindex, nl.clsact_parent(direction)):
                return
        nl.del_clsact(sock, ifindex, what=f"delete the clsact qdisc made for {target}")
    except SyscallError as e:
        if e.errno not in (_errno.ENOENT, _errno.EINVAL, _errno.ENODEV):
            raise


def _check_sched_cls(program) -> None:
    if program.type != ProgType.SCHED_CLS:
        raise Error(f"program {program.name!r} is a {program.type.name} program; a tc filter runs "
                    f"SCHED_CLS programs only")


def _filter_name(program) -> str:
    """The cls_bpf filter name, as libbpf writes it: ``<prog name>:[<prog id>]``."""
    prog_id = sc.obj_get_info_by_fd(program.fd, ProgInfo()).id
    return f"{program.name}:[{prog_id}]"


def _attach_legacy(program, ifindex: int, label: str, direction: str) -> Link:
    target = f"{label}:{direction}"
    name = _filter_name(program)
    key = (_netns_key(), ifindex)
    with deferred_signals() as section:
        sock = nl.RtNetlink()
        counted = False
        try:
            with _qdiscs_lock:
                created = nl.add_clsact(sock, ifindex,
                                        what=f"add a clsact qdisc to {label} for program {program.name!r}")
                if created or key in _our_qdiscs:
                    _our_qdiscs[key] = _our_qdiscs.get(key, 0) + 1
                    counted = True
            made = nl.add_bpf_filter(sock, ifindex, nl.clsact_parent(direction), program.fd, name,
                                     what=f"attach program {program.name!r} to {target} (cls_bpf)")
        except BaseException:
            if counted:
                with _qdiscs_lock:
                    left = _our_qdiscs.get(key, 0) - 1
                    if left > 0:
                        _our_qdiscs[key] = left
                    else:
                        _our_qdiscs.pop(key, None)
                        try:
                            _delete_qdisc_if_empty(sock, ifindex, target)
                        except Exception:
                            pass
            sock.close()
            raise
        link = TcFilterLink(program, target, sock, ifindex, direction, made, created, key, counted)
        section.on_interrupt(link)
    return link
