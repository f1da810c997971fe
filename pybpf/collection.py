"""Object: everything one BPF object put in the kernel (maps, programs, links)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from .resource import Resource, deferred_signals
from .errors import ClosedError, Error
from .kernel.constants import AttachType, ProgType
from .maps import Map
from .programs import Program
from .spec.object import ObjectSpec, VariableSpec, decode_value, encode_value


class Variable:
    """A global variable of a loaded object, read and written in the kernel's map.

    ``.data`` and ``.bss`` variables are read and written through the
    memory-mapped map (visible to the running programs at once); ``.rodata``
    is frozen: reading works, writing raises :class:`pybpf.Error`.  ``__arena``
    globals are read and written in the mapped arena, where the loader put them
    (``offset`` is from the arena's start: the map's data offset plus the
    variable's place in ``.addr_space.1``).
    """

    def __init__(self, spec: VariableSpec, map: Map):
        self.spec = spec
        self.map = map
        self.name = spec.name
        self.size = spec.size
        self.offset = spec.offset + map.data_offset

    @property
    def readonly(self) -> bool:
        return self.map.spec.readonly

    def get(self):
        """The current value (a copy), typed by BTF: an int for integers, str for char arrays,
        a typed struct (``bytes(value)`` gives the raw bytes)..."""
        mm = self.map.mmap()
        return decode_value(bytes(mm[self.offset:self.offset + self.size]), self.spec.btf, self.spec.type_id)

    def set(self, value) -> None:
        """Write the variable: raw bytes of its size, a typed value, or plain values (int, dict, tuple, str)."""
        if self.readonly:
            raise Error(f"variable {self.name!r} is in {self.spec.section}, which is read-only once loaded; "
                        f"set it before loading: pybpf.open(path).variables[{self.name!r}].set(...)")
        raw = encode_value(value, self.size, self.spec.btf, self.spec.type_id, f"variable {self.name!r}")
        mm = self.map.mmap()
        mm[self.offset:self.offset + self.size] = raw

    def __repr__(self) -> str:
        return f"<Variable {self.name} {self.spec.type_name} in {self.spec.section}>"


class _ReadOnlyDict(Mapping):
    def __init__(self, d: dict, what: str):
        self._d = d
        self._what = what

    def __getitem__(self, key):
        try:
            return self._d[key]
        except KeyError:
            known = ", ".join(sorted(self._d)) or "none"
            raise KeyError(f"no {self._what} {key!r} (this object has: {known})") from None

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {v!r}' for k, v in self._d.items())}}}"


# -- what a program needs to be attached ---------------------------------------------------------

_CGROUP_TYPES = frozenset({
    ProgType.CGROUP_SKB, ProgType.CGROUP_SOCK, ProgType.SOCK_OPS, ProgType.CGROUP_DEVICE,
    ProgType.CGROUP_SOCK_ADDR, ProgType.CGROUP_SYSCTL, ProgType.CGROUP_SOCKOPT,
})
_IFACE_ATTACH_TYPES = {     # SCHED_CLS sections by their expected attach type
    None: ("tc", "ingress"), AttachType.TCX_INGRESS: ("tc", "ingress"), AttachType.TCX_EGRESS: ("tc", "egress"),
    AttachType.NETKIT_PRIMARY: ("netkit", False), AttachType.NETKIT_PEER: ("netkit", True),
}
_TARGET_EXAMPLES = {
    "tracepoint": "'category/name'", "raw_tracepoint": "'name'", "kprobe": "'function'", "kretprobe": "'function'",
    "uprobe": "'PATH:FUNCTION'", "uretprobe": "'PATH:FUNCTION'", "trace": "'function'", "lsm": "'hook'",
}


def attach_needs(program) -> tuple[str, str]:
    """What ``program`` needs to be attached, as ``(kind, how)``: kind ``"none"`` (its section
    says where: ``Object.attach()`` attaches it), ``"iface"`` (XDP, tc: an interface),
    ``"cgroup"``, ``"socket"``, ``"sockmap"``, ``"netns"``, ``"netfilter"``, ``"map"``,
    ``"target"`` (a tracepoint, function or binary its section leaves out), ``"run"``
    (syscall programs: run, never attached) or ``"other"``; ``how`` says it in words, with
    the call that does it."""
    if program.auto_attachable:
        return "none", "nothing: its section says where"
    spec = program.spec
    ptype, atype, kind = program.type, spec.expected_attach_type, spec.sec_def.attach
    if ptype == ProgType.XDP:
        if atype in (AttachType.XDP_DEVMAP, AttachType.XDP_CPUMAP):
            return "map", "a DEVMAP or CPUMAP entry holding its fd (it runs from the map)"
        return "iface", "an interface: obj.attach(iface=IFACE), prog.attach_xdp(IFACE), or the CLI's --iface"
    if ptype == ProgType.SCHED_CLS:
        how, arg = _IFACE_ATTACH_TYPES.get(atype, ("tc", "ingress"))
        if how == "netkit":
            return "iface", "a netkit device: obj.attach(iface=IFACE) or prog.attach_netkit(IFACE)"
        return "iface", (f"an interface: obj.attach(iface=IFACE), prog.attach_tc(IFACE, {arg!r}), or the CLI's "
                         f"--iface")
    if ptype in _CGROUP_TYPES or atype == AttachType.LSM_CGROUP:
        if atype is None:
            return "cgroup", ("a cgroup v2 directory and an attach type (its section gives none): "
                              "prog.attach_cgroup(PATH, attach_type='ingress')")
        return "cgroup", ("a cgroup v2 directory: obj.attach(cgroup=PATH), prog.attach_cgroup(PATH), or the "
                          "CLI's --cgroup")
    if ptype == ProgType.SOCKET_FILTER:
        return "socket", "a socket: prog.attach_socket(sock)"
    if ptype == ProgType.SK_REUSEPORT:
        return "socket", "a SO_REUSEPORT socket group (setsockopt SO_ATTACH_REUSEPORT_EBPF with prog.fd)"
    if ptype in (ProgType.SK_SKB, ProgType.SK_MSG):
        return "sockmap", "a SOCKMAP or SOCKHASH: prog.attach_sockmap(map)"
    if ptype in (ProgType.SK_LOOKUP, ProgType.FLOW_DISSECTOR):
        return "netns", "a network namespace: prog.attach_netns() (this process's) or prog.attach_netns(PATH)"
    if ptype == ProgType.NETFILTER:
        return "netfilter", "a netfilter hook: prog.attach_netfilter(pf, hook, priority)"
    if ptype == ProgType.STRUCT_OPS:
        return "struct_ops", ("its struct_ops map, registered by obj.attach() or "
                              "obj.maps[NAME].attach_struct_ops()")
    if ptype == ProgType.SYSCALL:
        return "run", "nothing: a syscall program runs with prog.test_run() (BPF_PROG_TEST_RUN), it is never attached"
    if kind == "iter":
        return "map", "a map: prog.iterate(map=MAP)"
    if kind in _TARGET_EXAMPLES:
        return "target", (f"a target its section leaves out: prog.attach({_TARGET_EXAMPLES[kind]}), or set "
                          f"spec.programs[{program.name!r}].attach_target before loading")
    return "other", f"something pybpf does not attach by itself ({program.type.name} programs)"


def _attach_with(program, iface, cgroup):
    """The Link of ``program`` attached to ``iface`` or ``cgroup`` when it needs one of them
    and it is given; None otherwise."""
    kind, _ = attach_needs(program)
    atype = program.spec.expected_attach_type
    if kind == "iface" and iface is not None:
        if program.type == ProgType.XDP:
            return program.attach_xdp(iface)
        how, arg = _IFACE_ATTACH_TYPES.get(atype, ("tc", "ingress"))
        if how == "netkit":
            return program.attach_netkit(iface, peer=arg)
        return program.attach_tc(iface, arg)
    if kind == "cgroup" and cgroup is not None and atype is not None:
        return program.attach_cgroup(cgroup)
    return None


class AttachResult(list):
    """What :meth:`Object.attach` did.  It is the list of the new links (as it always was);
    ``not_attached`` maps the name of each program left alone to what it needs, in words
    (``{"xdp_count": "an interface: obj.attach(iface=IFACE), ..."}``)."""

    def __init__(self, links=(), not_attached=None):
        super().__init__(links)
        self.not_attached: dict[str, str] = dict(not_attached or {})

    @property
    def links(self) -> list:
        """The new links (the list itself, as a plain list)."""
        return list(self)

    def summary(self) -> str:
        """One line per program: attached (kind and target) or not, and what it needs."""
        lines = [f"{link.program.name}: attached ({link.kind} {link.target})" for link in self]
        lines += [f"{name}: not attached: needs {why}" for name, why in self.not_attached.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"AttachResult({list.__repr__(self)}, not_attached={sorted(self.not_attached)})"


class Object(Resource):
    """A loaded BPF object: ``maps``, ``programs``, ``variables`` (name → object) and ``links``.

    Use it as a context manager, or call :meth:`close`: that detaches every
    link and releases every fd and mmap the object holds.
    """

    def __init__(self, spec: ObjectSpec):
        self.spec = spec
        self.name = spec.name
        self._maps: dict[str, Map] = {}
        self._programs: dict[str, Program] = {}
        self._variables: dict[str, Variable] = {}
        self._links: list = []
        self._btf_fd = -1
        self._closed = False
        self.maps: Mapping[str, Map] = _ReadOnlyDict(self._maps, "map")
        self.programs: Mapping[str, Program] = _ReadOnlyDict(self._programs, "program")
        self.variables: Mapping[str, Variable] = _ReadOnlyDict(self._variables, "variable")

    # -- built by the loader ---------------------------------------------------------

    def _add_map(self, spec, fd: int) -> Map:
        """Takes ownership of ``fd`` (closed here if no Map can be made of it); the loader
        calls it in the same section as the syscall that made the fd."""
        from .kernel import syscall as sc
        from .kernel.attrs import MapInfo
        try:
            m = Map(fd, spec, btf=self.spec.btf)
        except BaseException:
            os.close(fd)
            raise
        self._maps[spec.name] = m      # owned: close() releases it from here on
        # the kernel's word on the sizes: the loader may have rounded (ring buffers)
        # or filled them in (perf event arrays: one entry per possible CPU)
        info = sc.obj_get_info_by_fd(fd, MapInfo())
        m.max_entries, m.key_size, m.value_size = info.max_entries, info.key_size, info.value_size
        for v in self.spec.variables.values():
            if v.map is spec:
                self._variables[v.name] = Variable(v, m)
        return m

    def _add_program(self, spec, fd: int, linked) -> Program:
        """Takes ownership of ``fd``, as :meth:`_add_map`."""
        try:
            p = Program(fd, spec, linked, owner=self)
        except BaseException:
            os.close(fd)
            raise
        self._programs[spec.name] = p
        return p

    # -- API ------------------------------------------------------------------------------

    @property
    def links(self) -> list:
        """Links made by :meth:`attach` and ``Program.attach`` that are still attached;
        closed with the object."""
        self._links = [link for link in self._links if not link.closed]
        return list(self._links)

    def attach(self, *, iface=None, cgroup=None) -> AttachResult:
        """Attach every program whose section says where (tracepoints, raw tracepoints, probes),
        and with ``iface`` (a name or an ifindex) the XDP and tc programs to that interface, with
        ``cgroup`` (a cgroup v2 directory) the cgroup programs to that cgroup.

        Returns the new links: an :class:`AttachResult`, a list whose ``not_attached`` says,
        for each program left alone, what it needs (an interface, a cgroup, a socket...; see
        :func:`attach_needs`).  If one attach fails, the links made by this call are closed
        and the error propagates.
        """
        if self._closed:
            raise ClosedError(f"object {self.name!r} is closed")
        made = AttachResult()
        try:
            for p in self._programs.values():
                if p.auto_attachable:
                    made.append(p.attach())
                    continue
                if p.type == ProgType.STRUCT_OPS:
                    continue           # runs through its struct_ops map, registered below
                link = _attach_with(p, iface, cgroup)
                if link is not None:
                    made.append(link)
                else:
                    made.not_attached[p.name] = attach_needs(p)[1]
            # struct_ops maps register their programs with the kernel, as libbpf's skeleton
            # attach does (bpf_map__attach_struct_ops for every struct_ops map)
            for m in self._maps.values():
                if getattr(m.spec, "struct_ops", None) is not None:
                    made.append(m.attach_struct_ops())
        except BaseException:
            with deferred_signals():   # a second Ctrl-C cannot stop the undoing half-way
                for link in made:
                    try:
                        link.close()
                    except Exception:
                        pass           # stays in _links: close() tries it again
                self._links = [link for link in self._links if not link.closed]
            raise
        return made

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Detach all links, close all programs and maps and the BTF fd.

        Every step is tried even when one raises; the first exception is raised
        at the end, and what failed stays owned, so a second ``close()`` finishes
        the job (and is a no-op once everything is released).  Ctrl-C is
        deferred to the end (:func:`pybpf.resource.deferred_signals`): closing
        perf-event links takes the kernel a while, and an interrupt there used
        to leave the rest of the object open for good."""
        self._closed = True
        first = None
        with deferred_signals():
            for link in list(self._links):
                try:
                    link.close()
                except BaseException as e:
                    first = first or e
                else:
                    self._links.remove(link)
            for part in (*self._programs.values(), *self._maps.values()):
                try:
                    part.close()
                except BaseException as e:
                    first = first or e
            if self._btf_fd >= 0:
                fd, self._btf_fd = self._btf_fd, -1
                try:
                    os.close(fd)
                except OSError as e:   # close(2) frees the fd even when it reports an error
                    first = first or e
        if first is not None:
            raise first
        # a closed program has nothing to add to its object: dropping the back reference
        # breaks the object <-> program cycle, so a closed, dropped object (its spec, BTF and
        # typed values) goes by reference counting now, not at the next full collection
        for program in self._programs.values():
            program._owner = None

    def __del__(self):
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"<Object {self.name}: {len(self._programs)} programs, {len(self._maps)} maps, "
                f"{len(self._links)} links{' (closed)' if self._closed else ''}>")

    def _repr_html_(self) -> str:
        """Jupyter's view: programs with their ids, maps with their first entries (pybpf.display)."""
        from .display import object_html
        return object_html(self)

    def _repr_pretty_(self, p, cycle) -> None:
        from .display import object_text
        p.text(object_text(self))


def load_object(spec: ObjectSpec, **kwargs) -> Object:
    """``spec.load(**kwargs)``: the loader (a layer below) creates the maps and loads the
    programs, handing them to a new :class:`Object`; the keywords are
    :func:`pybpf.loader.load_spec`'s."""
    from .loader import load_spec
    return load_spec(spec, new_object=Object, **kwargs)

