"""Map: a kernel BPF map owned through its file descriptor."""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
import sys
import weakref
from collections.abc import Iterator

from .resource import Resource, deferred_signals
from .errors import ClosedError, Error
from .kernel import syscall as sc
from .kernel.constants import MapType
from .spec.object import decode_value, encode_value

_PERCPU_TYPES = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
                           MapType.PERCPU_CGROUP_STORAGE})
# maps without keys: values are pushed and popped (peeked for bloom filters)
_QUEUE_STACK = (MapType.QUEUE, MapType.STACK)
_KEYLESS = (MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER)
_RAISE = object()
# maps that have no key/value interface from user space
_NO_ELEMENTS = frozenset({MapType.RINGBUF, MapType.USER_RINGBUF})


# arenas are mapped with libc's mmap: the kernel wants them at a given address (map_extra),
# which Python's mmap module cannot ask for
_MAP_FIXED = 0x10
_MAP_ANONYMOUS = 0x20
_MAP_FIXED_NOREPLACE = 0x100000
_MAP_FAILED = (1 << 64) - 1
_libc_mmap = sc.libc["mmap"]
_libc_mmap.restype = ctypes.c_void_p
_libc_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc_munmap = sc.libc["munmap"]
_libc_munmap.restype = ctypes.c_int
_libc_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


def _type_name(t: int) -> str:
    try:
        return MapType(t).name
    except ValueError:
        return str(t)


class Map(Resource):
    """A BPF map in the kernel.

    Attributes: ``name``, ``type`` (:class:`~pybpf.kernel.constants.MapType`),
    ``key_size``, ``value_size``, ``max_entries``, ``flags``, ``fd``, and the
    BTF ``key_type``/``value_type``.  Keys and values are typed by BTF when the
    map declares them (``__type(key, ...)``): ints for integers, enum members,
    str for char arrays, typed structs (``bytes(v)`` is always the raw value);
    raw bytes without BTF.  Raw bytes, typed values and plain Python values
    (ints, dicts, tuples) are accepted on the way in.  Per-CPU maps take and
    return a list with one value per possible CPU.  Close it (or the :class:`~pybpf.Object` that owns it) to
    release the fd.
    """

    def __init__(self, fd: int, spec, *, max_entries: int | None = None, btf=None):
        self._fd = fd
        self.spec = spec
        self.name: str = spec.name
        try:
            self.type = MapType(spec.type)
        except ValueError:
            self.type = spec.type
        self.key_size: int = spec.key_size
        self.value_size: int = spec.value_size
        self.max_entries: int = max_entries if max_entries is not None else spec.max_entries
        self.flags: int = spec.flags
        self._btf = btf
        self._mmap: mmap.mmap | None = None
        self._arena: tuple | None = None          # (address, size, memory, memoryview, munmap finalizer)
        if self.type in _PERCPU_TYPES:
            from .loader import possible_cpus
            self._ncpus = possible_cpus()
        else:
            self._ncpus = 0

    # -- lifetime --------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The map's file descriptor (raises ClosedError once closed)."""
        if self._fd < 0:
            raise ClosedError(f"map {self.name!r} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Release the fd (and the mmap of an internal map or an arena). Idempotent.

        Every step is tried even if one fails; the first failure is raised after.
        Signals are deferred meanwhile (:func:`pybpf.resource.deferred_signals`),
        so Ctrl-C cannot stop it between taking an fd and closing it."""
        first = None
        with deferred_signals():
            if self._arena is not None:
                try:
                    self._unmap_arena()
                except Exception as e:
                    first = e
            if self._mmap is not None:
                mm, self._mmap = self._mmap, None
                try:
                    mm.close()
                except BufferError:
                    pass  # a memoryview is still exported; the mapping goes when it does
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                try:
                    os.close(fd)
                except OSError as e:   # close(2) frees the fd even when it reports an error
                    first = first or e
        if first is not None:
            raise first

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return (f"<Map {self.name} {_type_name(self.type)} key_size={self.key_size} "
                f"value_size={self.value_size} max_entries={self.max_entries} {state}>")

    # -- encoding --------------------------------------------------------------------

    @property
    def btf(self):
        """The BTF of the object that defined the map (None without BTF)."""
        return self._btf

    @property
    def key_type(self):
        """The BTF type of the keys (None if not declared with ``__type(key, ...)``)."""
        return self._btf[self.spec.key_type_id] if self._btf is not None and self.spec.key_type_id else None

    @property
    def value_type(self):
        """The BTF type of the values (None if not declared; a DATASEC for .data/.rodata/.bss)."""
        return self._btf[self.spec.value_type_id] if self._btf is not None and self.spec.value_type_id else None

    @property
    def record_type(self):
        """For ring buffers: the record type the program declares, if any."""
        tid = getattr(self.spec, "record_type_id", 0)
        return self._btf[tid] if self._btf is not None and tid else None

    def _encode(self, value, size: int, type_id: int, what: str) -> bytearray:
        return bytearray(encode_value(value, size, self._btf, type_id, f"map {self.name!r}: {what}"))

    def _decode(self, raw, type_id: int):
        return decode_value(raw, self._btf, type_id)

    def _key(self, key) -> bytearray:
        return self._encode(key, self.key_size, self.spec.key_type_id, "key")

    def _value_buffer(self) -> bytearray:
        if self._ncpus:
            return bytearray(((self.value_size + 7) & ~7) * self._ncpus)
        return bytearray(self.value_size)

    def _decode_value(self, buf: bytearray):
        if self._ncpus:
            stride = (self.value_size + 7) & ~7
            return [self._decode(buf[i * stride:i * stride + self.value_size], self.spec.value_type_id)
                    for i in range(self._ncpus)]
        return self._decode(buf, self.spec.value_type_id)

    def _encode_value(self, value) -> bytearray:
        if self._ncpus:
            if not isinstance(value, (list, tuple)) or len(value) != self._ncpus:
                raise Error(f"map {self.name!r} is per-CPU: give a list of {self._ncpus} values "
                            f"(one per possible CPU)")
            stride = (self.value_size + 7) & ~7
            out = bytearray(stride * self._ncpus)
            for i, v in enumerate(value):
                out[i * stride:i * stride + self.value_size] = self._encode(
                    v, self.value_size, self.spec.value_type_id, "value")
            return out
        return self._encode(value, self.value_size, self.spec.value_type_id, "value")

    def _check_elements(self) -> None:
        if self.type in _NO_ELEMENTS:
            raise Error(f"map {self.name!r} is a {_type_name(self.type)}: use pybpf.RingBuffer / "
                        f"pybpf.UserRingBuffer, it has no keys or values")

    # -- element access ------------------------------------------------------------------

    def lookup(self, key, default=None):
        """The value under ``key``, or ``default`` when there is none."""
        self._check_elements()
        buf = self._value_buffer()
        if not sc.map_lookup_elem(self.fd, self._key(key), buf):
            return default
        return self._decode_value(buf)

    def __getitem__(self, key):
        self._check_elements()
        buf = self._value_buffer()
        if not sc.map_lookup_elem(self.fd, self._key(key), buf):
            raise KeyError(key)
        return self._decode_value(buf)

    def update(self, key, value, flags: int = 0) -> None:
        """Store ``value`` under ``key`` (``flags``: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        self._check_elements()
        sc.map_update_elem(self.fd, self._key(key), self._encode_value(value), flags)

    __setitem__ = update

    def delete(self, key) -> bool:
        """Delete ``key``; False if it was not there."""
        self._check_elements()
        return sc.map_delete_elem(self.fd, self._key(key))

    def __delitem__(self, key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def keys(self) -> Iterator:
        """Iterate over the keys (BPF_MAP_GET_NEXT_KEY)."""
        self._check_elements()
        prev = None
        nxt = bytearray(self.key_size)
        while sc.map_get_next_key(self.fd, prev, nxt):
            yield self._decode(bytes(nxt), self.spec.key_type_id)
            prev = bytearray(nxt)

    __iter__ = keys

    def items(self) -> Iterator[tuple]:
        """Iterate over (key, value) pairs; keys deleted meanwhile are skipped."""
        for k in self.keys():
            v = self.lookup(k, _MISSING)
            if v is not _MISSING:
                yield k, v

    def values(self) -> Iterator:
        for _, v in self.items():
            yield v

    # -- internal maps (.data/.rodata/.bss) ------------------------------------------------

    def _write_initial(self, data: bytes) -> None:
        sc.map_update_elem(self.fd, bytearray(4), bytearray(data))

    def mmap(self) -> mmap.mmap | memoryview:
        """The value of a BPF_F_MMAPABLE array map, memory-mapped (read-only for frozen .rodata).

        For an ARENA map: a writable memoryview (format ``B``) of the whole arena, mapped
        at the address the kernel fixes for it (``map_extra``, or the first mapping's); the
        loader maps it before loading programs, as libbpf does.  Arena pointers that
        programs store are addresses in this mapping: ``ptr - arena.address`` indexes the
        view.  Views taken from it must not outlive the map: once it is closed they read
        zeros."""
        if self.type == MapType.ARENA:
            return self._arena_view()
        if self._mmap is None:
            from .kernel.constants import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG
            if not self.flags & BPF_F_MMAPABLE:
                raise Error(f"map {self.name!r} is not mmapable (no BPF_F_MMAPABLE)")
            size = max(self.value_size * self.max_entries, 1)
            size = (size + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1)
            prot = mmap.PROT_READ if self.flags & BPF_F_RDONLY_PROG else mmap.PROT_READ | mmap.PROT_WRITE
            self._mmap = mmap.mmap(self.fd, size, mmap.MAP_SHARED, prot)
        return self._mmap

    # -- arenas ----------------------------------------------------------------------------

    @property
    def address(self) -> int:
        """An ARENA map's address in this process (where :meth:`mmap` maps it)."""
        if self.type != MapType.ARENA:
            raise Error(f"map {self.name!r} is a {_type_name(self.type)}: only arenas have an address")
        self._arena_view()
        return self._arena[0]

    @property
    def data_offset(self) -> int:
        """Where the object's global variables start in the mapped value: for an arena, the
        offset of its ``__arena`` globals (libbpf's bpf_map__data_offset, at the end of the
        arena); 0 for other maps."""
        if self.type != MapType.ARENA:
            return 0
        return self.spec.arena_data_offset(mmap.PAGESIZE, self.max_entries)

    def _arena_view(self) -> memoryview:
        if self._arena is None:
            size = self.max_entries * mmap.PAGESIZE
            want = self.spec.map_extra
            # the kernel takes an arena at map_extra only; never replace what is mapped there
            flags = mmap.MAP_SHARED | (_MAP_FIXED_NOREPLACE if want else 0)
            # a signal between mmap returning and the finalizer taking the address would leave the
            # arena (and so the map: a mapping holds it) in this process for good
            with deferred_signals():
                self._map_arena(want, size, flags)
        return self._arena[3]

    def _map_arena(self, want: int, size: int, flags: int) -> None:
        addr = _libc_mmap(want or None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, self.fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            where = f" at 0x{want:x}" if want else ""
            hint = ""
            if err == _errno.EEXIST:
                hint = (f": something else is mapped in [0x{want:x}, 0x{want + size:x}) of this process; "
                        f"the arena's map_extra fixes its address (change it, or leave it 0)")
            elif err == _errno.EINVAL:
                hint = ": the kernel fixed this arena's address elsewhere (another process mapped it first?)"
            raise Error(f"map {self.name!r}: cannot mmap the arena ({size} bytes{where}): "
                        f"{os.strerror(err)}{hint}")
        if want and addr != want:        # a kernel without MAP_FIXED_NOREPLACE took it as a hint
            _libc_munmap(addr, size)
            raise Error(f"map {self.name!r}: the arena must be mapped at 0x{want:x} (its map_extra), but "
                        f"this process has something there")
        mem = type("ArenaMemory", (ctypes.c_ubyte * size,), {}).from_address(addr)
        # the address range is unmapped when the last view of it goes (or by close())
        unmap = weakref.finalize(mem, _libc_munmap, addr, size)
        self._arena = (addr, size, mem, memoryview(mem).cast("B"), unmap)

    def _unmap_arena(self) -> None:
        addr, size, carr, view, unmap = self._arena
        self._arena = None
        try:
            view.release()
            released = True
        except BufferError:             # something holds a buffer exported by the view
            released = False
        del view
        # sys.getrefcount counts its argument and our name: more means slices of the view live
        if released and sys.getrefcount(carr) <= 2:
            unmap()
        else:
            # views are still alive: put zero pages in the arena's place, which releases the
            # arena (its mapping held a reference) and lets stale views read zeros, not crash;
            # the finalizer unmaps them with the last view
            _libc_mmap(addr, size, mmap.PROT_READ | mmap.PROT_WRITE,
                       mmap.MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_FIXED, -1, 0)

    # -- queues, stacks and bloom filters (maps without keys) ------------------------------

    def _check_keyless(self, what: str, types) -> None:
        if self.type not in types:
            raise Error(f"map {self.name!r} is a {_type_name(self.type)}: {what} is for "
                        f"{' and '.join(_type_name(t) for t in types)} maps")

    def push(self, value, flags: int = 0) -> None:
        """Push ``value`` onto a queue or stack map, or add it to a bloom filter.
        ``flags=BPF_EXIST`` (2) makes a full queue/stack drop its oldest element instead of failing."""
        self._check_keyless("push()", _KEYLESS)
        sc.map_update_elem(self.fd, None, self._encode_value(value), flags)

    def pop(self, default=_RAISE):
        """Remove and return the next value of a queue (oldest) or stack (newest).
        When it is empty: ``default`` if given, else KeyError."""
        self._check_keyless("pop()", _QUEUE_STACK)
        buf = self._value_buffer()
        if not sc.map_lookup_and_delete_elem(self.fd, None, buf):
            if default is _RAISE:
                raise KeyError(f"map {self.name!r} is empty")
            return default
        return self._decode_value(buf)

    def peek(self, default=_RAISE):
        """The next value of a queue or stack map without removing it (``default`` or KeyError when empty)."""
        self._check_keyless("peek()", _QUEUE_STACK)
        buf = self._value_buffer()
        if not sc.map_lookup_elem(self.fd, None, buf):
            if default is _RAISE:
                raise KeyError(f"map {self.name!r} is empty")
            return default
        return self._decode_value(buf)

    def may_contain(self, value) -> bool:
        """Bloom filter test: False means ``value`` was never pushed; True means it probably was."""
        self._check_keyless("may_contain()", (MapType.BLOOM_FILTER,))
        return sc.map_lookup_elem(self.fd, None, self._encode_value(value))


_MISSING = object()
