"""Object: everything one BPF object put in the kernel (maps, programs, links)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from .resource import Resource, deferred_signals
from .errors import ClosedError, Error
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

    def attach(self) -> list:
        """Attach every program whose section says where (tracepoints, raw tracepoints, probes).

        Returns the new links.  Programs that need a target the section does not
        give (xdp, socket, syscall...) are left alone.  If one attach fails, the
        links made by this call are closed and the error propagates.
        """
        if self._closed:
            raise ClosedError(f"object {self.name!r} is closed")
        made = []
        try:
            for p in self._programs.values():
                if not p.auto_attachable:
                    continue
                made.append(p.attach())
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
