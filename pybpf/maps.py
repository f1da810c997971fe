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
from .errors import ClosedError, Error, NotSupportedError, PermissionError, SyscallError
from .kernel import syscall as sc
from .kernel.attrs import MapInfo as _MapInfoStruct
from .kernel.constants import BPF_F_LOCK, Cmd, MapType
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
_MAP_FAILED = sc.MAP_FAILED
_libc_mmap = sc.libc_mmap
_libc_munmap = sc.libc_munmap


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
        self._pin_path: str | None = None          # where pin() (or the loader's pin_root) pinned it
        self._mmap: mmap.mmap | None = None
        self._arena: tuple | None = None          # (address, size, memory, memoryview, munmap finalizer)
        if self.type in _PERCPU_TYPES:
            from .kernel.cpus import possible_cpus
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

    def lookup(self, key, default=None, *, lock: bool = False):
        """The value under ``key``, or ``default`` when there is none.

        ``lock=True`` (BPF_F_LOCK): for values holding a ``struct bpf_spin_lock``, the value is
        copied under that lock, so it is never seen half-way through a program's locked update
        (the lock field itself reads as zero)."""
        self._check_elements()
        buf = self._value_buffer()
        if not lock:
            if not sc.map_lookup_elem(self.fd, self._key(key), buf):
                return default
            return self._decode_value(buf)
        try:
            found = sc.map_lookup_elem(self.fd, self._key(key), buf, BPF_F_LOCK)
        except SyscallError as e:
            raise self._failure(e, "lookup", lock=True) from None
        return self._decode_value(buf) if found else default

    def _failure(self, e: SyscallError, what: str, lock: bool = False, done: str = "") -> Exception:
        """The error for a failed ``what`` (a method name): what the map's state explains
        (a frozen map, lock=True on a value without a lock), or the kernel's error with the map
        named; ``done`` tells how far a batch got."""
        hint = ""
        if lock and e.errno == _errno.EINVAL:
            hint = ("lock=True (BPF_F_LOCK) needs a value type with a struct bpf_spin_lock, declared with "
                    "BTF (__type(value, ...))")
        elif isinstance(e, PermissionError) and e.errno == _errno.EPERM and what not in _READS and self.frozen:
            hint = "the map is frozen (BPF_MAP_FREEZE): user space can only read it now"
        if not hint and not done:
            return e
        text = f"map {self.name!r}: {what} failed" + (f" {done}" if done else "") + (f": {hint}" if hint else "")
        if not hint and isinstance(e, PermissionError) and str(e).count(": ") >= 2:
            text += "; " + str(e).split(": ", 2)[2]      # keep the permission hint bpf() gave
        return type(e)(e.command, e.errno, text)

    def __getitem__(self, key):
        self._check_elements()
        buf = self._value_buffer()
        if not sc.map_lookup_elem(self.fd, self._key(key), buf):
            raise KeyError(key)
        return self._decode_value(buf)

    def update(self, key, value, flags: int = 0, *, lock: bool = False) -> None:
        """Store ``value`` under ``key`` (``flags``: BPF_ANY, BPF_NOEXIST, BPF_EXIST).
        ``lock=True`` (BPF_F_LOCK) writes a value holding a ``struct bpf_spin_lock`` under
        that lock (the lock field of ``value`` is ignored)."""
        self._check_elements()
        try:
            sc.map_update_elem(self.fd, self._key(key), self._encode_value(value),
                               flags | BPF_F_LOCK if lock else flags)
        except SyscallError as e:
            raise self._failure(e, "update", lock) from None

    def __setitem__(self, key, value) -> None:
        self.update(key, value)

    def delete(self, key) -> bool:
        """Delete ``key``; False if it was not there."""
        self._check_elements()
        try:
            return sc.map_delete_elem(self.fd, self._key(key))
        except SyscallError as e:
            raise self._failure(e, "delete") from None

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

    # -- kernel object: id, info, pins, freeze (pybpf.live) ----------------------------------

    @classmethod
    def _from_fd(cls, fd: int, pin_path: str | None = None) -> "Map":
        """A Map around map ``fd`` (owned from now on), described by the kernel (its sizes,
        flags and name) and typed through its kernel BTF when it has one."""
        try:
            from .live import MapInfo as _Info, btf_by_id
            from .spec.object import MapSpec
            info = _Info.from_fd(fd)
            spec = MapSpec(name=info.name, type=int(info.type), key_size=info.key_size,
                           value_size=info.value_size, max_entries=info.max_entries, flags=info.flags,
                           key_type_id=info.btf_key_type_id, value_type_id=info.btf_value_type_id,
                           map_extra=info.map_extra)
            btf = None
            if info.btf_id and (info.btf_key_type_id or info.btf_value_type_id):
                try:
                    btf = btf_by_id(info.btf_id)
                except Error:
                    btf = None       # released meanwhile, or unreadable: raw bytes then
            m = cls(fd, spec, btf=btf)
        except BaseException:
            os.close(fd)
            raise
        m._pin_path = pin_path
        return m

    @classmethod
    def from_pinned(cls, path, *, readonly: bool = False) -> "Map":
        """Open the map pinned at ``path`` (BPF_OBJ_GET), typed through its BTF when it has
        one.  ``readonly=True`` opens it read-only (BPF_F_RDONLY).  :meth:`unpin` removes
        that pin."""
        from .kernel.constants import BPF_F_RDONLY
        from .live import open_pinned
        path = os.fspath(path)
        with deferred_signals() as section:
            m = cls._from_fd(open_pinned(path, "map", BPF_F_RDONLY if readonly else 0), path)
            section.on_interrupt(m)
        return m

    @classmethod
    def from_id(cls, map_id: int, *, readonly: bool = False) -> "Map":
        """Open the map the kernel knows as ``map_id`` (BPF_MAP_GET_FD_BY_ID: needs
        CAP_SYS_ADMIN), typed through its BTF when it has one.  ``readonly=True``: read-only
        (BPF_F_RDONLY)."""
        from .kernel.constants import BPF_F_RDONLY
        from .live import open_id
        with deferred_signals() as section:
            m = cls._from_fd(open_id("map", map_id, BPF_F_RDONLY if readonly else 0))
            section.on_interrupt(m)
        return m

    @property
    def id(self) -> int:
        """The map's id in the kernel (what ``bpftool map list`` shows)."""
        return sc.obj_get_info_by_fd(self.fd, _MapInfoStruct()).id

    def info(self):
        """What the kernel reports about the map: a :class:`pybpf.MapInfo`."""
        from .live import MapInfo as _Info
        return _Info.from_fd(self.fd)

    @property
    def frozen(self) -> bool:
        """True once the map is frozen (:meth:`freeze`, or ``.rodata``): user space can only read it."""
        try:
            with open(f"/proc/self/fdinfo/{self.fd}") as f:
                for line in f:
                    if line.startswith("frozen:"):
                        return line.split()[1] != "0"
        except (OSError, IndexError):
            pass
        return False

    def freeze(self) -> None:
        """Make the map read-only for user space, for good (BPF_MAP_FREEZE): later updates and
        deletes from any process fail; programs still write it (unless it is BPF_F_RDONLY_PROG)."""
        try:
            sc.map_freeze(self.fd)
        except SyscallError as e:
            hint = ""
            if e.errno == _errno.EBUSY:
                hint = (" (it is frozen already, or mapped writable with mmap(): a writable mapping "
                        "and a freeze exclude each other)")
            elif e.errno == _errno.EPERM and self.frozen:
                hint = " (it is frozen already)"
            elif e.errno in (_errno.EOPNOTSUPP, 524, _errno.EINVAL):
                hint = f" ({_type_name(self.type)} maps cannot be frozen)"
            raise type(e)(e.command, e.errno, f"map {self.name!r}: cannot freeze it{hint}") from None

    @property
    def pin_path(self) -> str | None:
        """Where :meth:`pin` (or a load with ``pin_root=``, or :meth:`from_pinned`) pinned it; None
        if it is not pinned from here."""
        return self._pin_path

    def pin(self, path) -> None:
        """Pin the map at ``path`` on a bpffs mount (BPF_OBJ_PIN), so that it outlives this
        process; its directory is made if missing, as libbpf does.  Pinning again at the same
        path does nothing; a map pinned from here elsewhere must be unpinned first."""
        from .live import pin_fd
        path = os.fspath(path)
        if self._pin_path is not None:
            if os.path.abspath(path) == os.path.abspath(self._pin_path) and os.path.exists(path):
                return
            raise Error(f"map {self.name!r} is pinned at {self._pin_path} already: unpin() it first")
        with deferred_signals():    # the pin and its record in one step: a Ctrl-C comes after both
            self._pin_path = pin_fd(self.fd, path, f"map {self.name!r}")

    def unpin(self, path=None) -> None:
        """Remove the pin (``path``, default: where it was pinned from here); the map goes once
        nothing else holds it."""
        from .live import unpin_path
        if path is None:
            path = self._pin_path
            if path is None:
                raise Error(f"map {self.name!r} is not pinned from here: give the path to unpin")
        with deferred_signals():    # the unpin and its record in one step
            unpin_path(path, f"map {self.name!r}")
            if self._pin_path is not None and os.path.abspath(os.fspath(path)) == os.path.abspath(self._pin_path):
                self._pin_path = None

    # -- lookup and delete -----------------------------------------------------------------

    def lookup_and_delete(self, key, default=None):
        """Remove ``key`` and return the value it had, in one step (BPF_MAP_LOOKUP_AND_DELETE_ELEM):
        nobody can change it in between.  ``default`` when the key is not there.  For hash maps
        (plain, per-CPU, LRU) and, with ``key=None``, queues and stacks (as :meth:`pop`)."""
        self._check_elements()
        if self.type in _QUEUE_STACK:
            return self.pop(default)
        if self.type not in _HASH_TYPES:
            raise Error(f"map {self.name!r} is a {_type_name(self.type)}: lookup_and_delete() is for hash maps "
                        f"(HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH) and queues/stacks; use lookup() "
                        f"then delete()")
        buf = self._value_buffer()
        try:
            found = sc.map_lookup_and_delete_elem(self.fd, self._key(key), buf)
        except SyscallError as e:
            if e.errno in (_errno.EOPNOTSUPP, 524):
                raise NotSupportedError(
                    f"map {self.name!r}: this kernel cannot look up and delete in one step in "
                    f"{_type_name(self.type)} maps (BPF_MAP_LOOKUP_AND_DELETE_ELEM failed with errno "
                    f"{e.errno}; hash maps have it since Linux 5.14): use lookup() then delete()") from None
            raise self._failure(e, "lookup_and_delete") from None
        return self._decode_value(buf) if found else default

    # -- batches (BPF_MAP_*_BATCH) ----------------------------------------------------------

    def _value_stride(self) -> int:
        return ((self.value_size + 7) & ~7) * self._ncpus if self._ncpus else self.value_size

    def _batch_chunk(self, batch_size) -> int:
        if batch_size is not None:
            if not isinstance(batch_size, int) or batch_size < 1:
                raise Error(f"map {self.name!r}: batch_size is a positive number of elements, not {batch_size!r}")
            return batch_size
        per = self.key_size + self._value_stride()
        return max(1, min(self.max_entries or 1, _BATCH_BYTES // max(per, 1)))

    def _batch_failed(self, e: SyscallError, op: str, lock: bool = False, done: str = "") -> Exception:
        if e.errno in (_errno.EOPNOTSUPP, 524):
            return NotSupportedError(f"map {self.name!r}: this kernel has no {e.command} for "
                                     f"{_type_name(self.type)} maps; use {_ONE_AT_A_TIME[op]}")
        if e.errno == _errno.EINVAL and _kernel_lacks_cmd(e.command):
            return NotSupportedError(f"this kernel has no {e.command} (its enum bpf_cmd lacks it; batch "
                                     f"operations came with Linux 5.6): use {_ONE_AT_A_TIME[op]}")
        return self._failure(e, op, lock, done)

    def lookup_batch(self, count: int | None = None, *, batch_size: int | None = None) -> list[tuple]:
        """The map's (key, value) pairs, read in batches (BPF_MAP_LOOKUP_BATCH): typed as
        :meth:`items` gives them (per-CPU values as lists), in the kernel's order.  ``count``:
        at most that many (None: all).  ``batch_size``: elements per system call (default: as
        many as fit in 4 MiB); a hash bucket is read whole, so a larger one is used when a bucket
        does not fit."""
        pairs = self._read_batches(Cmd.MAP_LOOKUP_BATCH, count, batch_size, "lookup_batch")
        return pairs if count is None else pairs[:count]

    def lookup_and_delete_batch(self, count: int | None = None, *, batch_size: int | None = None) -> list[tuple]:
        """Like :meth:`lookup_batch`, deleting what it returns (BPF_MAP_LOOKUP_AND_DELETE_BATCH):
        drains a hash map.  A hash bucket is read and deleted whole, so this may return a few
        more than ``count``.  Not for array maps, whose elements cannot be deleted."""
        self._check_deletable("lookup_and_delete_batch")
        return self._read_batches(Cmd.MAP_LOOKUP_AND_DELETE_BATCH, count, batch_size, "lookup_and_delete_batch")

    def _check_deletable(self, op: str) -> None:
        if self.type in _ARRAY_TYPES:
            raise Error(f"map {self.name!r} is a {_type_name(self.type)}: array elements always exist and cannot be "
                        f"deleted (the kernel refuses {op}); write zero values with update_batch() instead")

    def _read_batches(self, cmd: Cmd, count, batch_size, op: str) -> list[tuple]:
        raw_keys, raw_values, total = self._read_batches_raw(cmd, count, batch_size, op)
        return list(zip(self._decode_keys(raw_keys, total), self._decode_values(raw_values, total)))

    def _read_batches_raw(self, cmd: Cmd, count, batch_size, op: str) -> tuple[bytearray, bytearray, int]:
        """The keys and values of up to ``count`` elements as the kernel wrote them (values of
        per-CPU maps in 8-byte slots, one per possible CPU), and their number."""
        self._check_elements()
        if count is not None and (not isinstance(count, int) or count < 0):
            raise Error(f"map {self.name!r}: count is a number of elements (or None for all), not {count!r}")
        if count == 0:
            return bytearray(), bytearray(), 0
        key_size, stride = self.key_size, self._value_stride()
        chunk = self._batch_chunk(batch_size)
        # the cursor is opaque: a key for maps read by key order (arrays), a u32 bucket index
        # for hash maps (kernel/bpf/hashtab.c __htab_map_lookup_and_delete_batch)
        cursor_size = max(key_size, 8)
        cursor_in, cursor_out = None, bytearray(cursor_size)
        key_parts, value_parts = [], []
        total = 0
        need = 0            # a hash bucket larger than the last request: ask for at least this many
        fd = self.fd
        while count is None or total < count:
            n = chunk if count is None else min(chunk, count - total)
            n = max(n, need)
            keys, values = bytearray(n * key_size), bytearray(n * stride)
            try:
                done, err = sc.map_batch(cmd, fd, keys, values, n, cursor_in, cursor_out,
                                         allowed=(_errno.ENOENT, _errno.ENOSPC))
            except SyscallError as e:
                raise self._batch_failed(e, op) from None
            if err == _errno.ENOSPC and not done:
                # the next hash bucket holds more than n elements (the kernel returns a bucket
                # whole or not at all): ask again for more
                need = n * 2
                continue
            need = 0
            if done:
                if done < n:
                    del keys[done * key_size:], values[done * stride:]
                key_parts.append(keys)
                value_parts.append(values)
                total += done
            if err == _errno.ENOENT:
                break
            cursor_in, cursor_out = cursor_out, bytearray(cursor_size)
        if len(key_parts) == 1:
            return key_parts[0], value_parts[0], total
        return bytearray().join(key_parts), bytearray().join(value_parts), total

    # -- numpy arrays of keys and values ---------------------------------------------------

    def _dtype(self, dtype, type_id: int, size: int, what: str, role: str):
        """The numpy dtype of the map's keys or values (``role``): ``dtype`` as given, else
        the map's BTF type; its size must be the map's ``size``."""
        from .spec.dtypes import resolve_dtype
        self._check_elements()
        where = f"map {self.name!r}: {what}"
        if dtype is None:
            if self._btf is None or not type_id:
                raise Error(f"{where} needs a dtype: the map declares no BTF {role} type "
                            f"(__type({role}, ...)), so pass {'key_' if role == 'key' else ''}dtype= "
                            f"(a numpy dtype of {size} bytes, or a type spelling such as 'struct stats')")
            dt = resolve_dtype(self._btf, type_id, where)
        else:
            dt = resolve_dtype(self._btf, dtype, where)
        if dt.itemsize != size:
            raise Error(f"{where}: dtype {dt} is {dt.itemsize} bytes, but the map's {role}s are {size} bytes")
        return dt

    def _values_ndarray(self, raw: bytearray, n: int, dt):
        """``n`` values in ``raw`` as an array of ``dt`` without copying: shape (n,), or
        (n, possible CPUs) for per-CPU maps, whose values sit in 8-byte slots
        (kernel/bpf/syscall.c bpf_map_copy_value: round_up(value_size, 8) per CPU)."""
        if self._ncpus:
            stride = self._value_stride()
            return _ndarray_over(raw, (n, self._ncpus), dt, strides=(stride, stride // self._ncpus))
        return _ndarray_over(raw, n, dt)

    def items_array(self, *, dtype=None, key_dtype=None) -> tuple:
        """All (keys, values) as two numpy arrays, read in batches (BPF_MAP_LOOKUP_BATCH):
        ``keys[i]`` holds ``values[i]``, in the kernel's order (index order for arrays).
        The dtypes come from the map's BTF key and value types, or are given.  Values of
        per-CPU maps have shape (n, possible CPUs).  numpy is needed (``pip install
        pybpf[numpy]``)."""
        vdt = self._dtype(dtype, self.spec.value_type_id, self.value_size, "items_array()", "value")
        if key_dtype is None and self.type in _ARRAY_TYPES and not self.spec.key_type_id:
            key_dtype = "<u4"       # array keys are u32 indexes
        kdt = self._dtype(key_dtype, self.spec.key_type_id, self.key_size, "items_array()", "key")
        raw_keys, raw_values, n = self._read_batches_raw(Cmd.MAP_LOOKUP_BATCH, None, None, "lookup_batch")
        keys = _ndarray_over(raw_keys, n, kdt)
        return keys, self._values_ndarray(raw_values, n, vdt)

    def values_array(self, dtype=None):
        """All values as one numpy array, read in batches (BPF_MAP_LOOKUP_BATCH), then one
        array over the bytes the kernel wrote: index order for array maps (``values_array()[i]``
        is ``lookup(i)``), the kernel's order for hash maps (as :meth:`lookup_batch`).  The
        dtype is the map's BTF value type, or ``dtype`` (a numpy dtype, or a type spelling
        such as ``"struct stats"``) of the value's size.  Per-CPU maps give shape
        (n, possible CPUs).  numpy is needed (``pip install pybpf[numpy]``)."""
        dt = self._dtype(dtype, self.spec.value_type_id, self.value_size, "values_array()", "value")
        _, raw_values, n = self._read_batches_raw(Cmd.MAP_LOOKUP_BATCH, None, None, "lookup_batch")
        return self._values_ndarray(raw_values, n, dt)

    def lookup_array(self, keys=None, dtype=None):
        """The values under ``keys`` as one numpy array, ``lookup_array(keys)[i]`` equal to
        ``lookup(keys[i])``; per-CPU maps give shape (len(keys), possible CPUs).

        ``keys=None``: array maps give every element in index order, by batches
        (BPF_MAP_LOOKUP_BATCH); hash maps need keys (their order is the kernel's: use
        :meth:`items_array`).  Given keys of an array map are read by one batch of the whole
        array, then indexed; those of a hash map one lookup each, and a missing key raises
        KeyError.  ``dtype`` as for :meth:`values_array`."""
        dt = self._dtype(dtype, self.spec.value_type_id, self.value_size, "lookup_array()", "value")
        if self.type in _ARRAY_TYPES:
            everything = self.values_array(dt)
            if keys is None:
                return everything
            from .spec.dtypes import numpy
            np = numpy()
            index = np.asarray(keys)
            if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
                raise Error(f"map {self.name!r}: lookup_array() takes a sequence of integer indexes, "
                            f"not {type(keys).__name__} of {index.dtype}")
            index = index.astype(np.int64, copy=False)
            bad = (index < 0) | (index >= len(everything))
            if bad.any():
                raise KeyError(int(index[bad][0]))
            return everything[index]
        if keys is None:
            raise Error(f"map {self.name!r} is a {_type_name(self.type)}: lookup_array() needs the keys "
                        "(a hash map has no index order); items_array() gives every key with its value")
        keys = list(keys)
        stride = self._value_stride()
        raw = bytearray(stride * len(keys))
        view = memoryview(raw)
        fd = self.fd
        for i, key in enumerate(keys):
            # the kernel copies straight into the slice (bpf() takes the buffer's address)
            if not sc.map_lookup_elem(fd, self._key(key), view[i * stride:(i + 1) * stride]):
                raise KeyError(key)
        return self._values_ndarray(raw, len(keys), dt)

    def update_batch(self, items, *, lock: bool = False, batch_size: int | None = None) -> int:
        """Store many (key, value) pairs (a mapping or an iterable of pairs) in a few system
        calls (BPF_MAP_UPDATE_BATCH), as :meth:`update` with BPF_ANY would one by one (the
        kernel's batch takes no BPF_NOEXIST/BPF_EXIST); ``lock=True`` adds BPF_F_LOCK.  Returns
        the number stored; on an error (a full map: E2BIG), the exception says how many were
        stored before it, in the order given."""
        self._check_elements()
        pairs = list(items.items()) if hasattr(items, "items") else list(items)
        if not pairs:
            return 0
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise Error(f"map {self.name!r}: update_batch() takes (key, value) pairs or a mapping")
        keys = self._encode_keys([k for k, _ in pairs])
        values = self._encode_values([v for _, v in pairs])
        # kernel/bpf/syscall.c generic_map_update_batch: elem_flags may only be BPF_F_LOCK
        elem_flags = BPF_F_LOCK if lock else 0
        return self._write_batches(Cmd.MAP_UPDATE_BATCH, keys, values, len(pairs), elem_flags, batch_size,
                                   "update_batch")

    def delete_batch(self, keys, *, batch_size: int | None = None) -> int:
        """Delete many keys in a few system calls (BPF_MAP_DELETE_BATCH); keys that are not in
        the map are skipped.  Returns the number deleted.  Not for array maps."""
        self._check_elements()
        self._check_deletable("delete_batch")
        keys = list(keys)
        if not keys:
            return 0
        raw = self._encode_keys(keys)
        key_size = self.key_size
        deleted = 0
        start = 0
        while start < len(keys):
            # the kernel stops at the first missing key (ENOENT), having deleted those before it
            done = self._write_batches(Cmd.MAP_DELETE_BATCH, raw[start * key_size:], None, len(keys) - start,
                                       0, batch_size, "delete_batch", stop_at_missing=True)
            deleted += done
            start += done + 1       # skip the missing key
        return deleted

    def _write_batches(self, cmd: Cmd, keys: bytes, values, n: int, elem_flags: int, batch_size, op: str,
                       stop_at_missing: bool = False) -> int:
        key_size, stride = self.key_size, self._value_stride()
        chunk = self._batch_chunk(batch_size) if batch_size is not None else \
            max(1, _BATCH_BYTES // max(key_size + (stride if values is not None else 0), 1))
        fd = self.fd
        done_total = 0
        allowed = (_errno.ENOENT,) if stop_at_missing else ()
        while done_total < n:
            m = min(chunk, n - done_total)
            k = bytearray(keys[done_total * key_size:(done_total + m) * key_size])
            v = bytearray(values[done_total * stride:(done_total + m) * stride]) if values is not None else None
            try:
                done, err = sc.map_batch(cmd, fd, k, v, m, elem_flags=elem_flags, allowed=allowed)
            except SyscallError as e:
                done_total += getattr(e, "done", 0)
                raise self._batch_failed(e, op, bool(elem_flags & BPF_F_LOCK),
                                         f"after {done_total} of {n} elements") from None
            done_total += done
            if err:             # ENOENT of a delete: the key at done_total is not in the map
                return done_total
        return done_total

    # batch encoding: plain integer keys and values go through one array conversion

    def _int_format(self, type_id: int, size: int) -> str | None:
        """The memoryview format of an integer type (None for anything else: typed per element)."""
        if self._btf is None or not type_id:
            return None
        from .spec.btf import Kind
        t = self._btf.resolve(type_id)
        if t is None or t.kind != Kind.INT or t.size != size or size not in _INT_CODES:
            return None
        return _INT_CODES[size][1 if t.signed else 0]

    def _decode_keys(self, raw: bytes, n: int) -> list:
        fmt = self._int_format(self.spec.key_type_id, self.key_size)
        if fmt is not None:
            return memoryview(raw).cast(fmt).tolist()
        size, tid = self.key_size, self.spec.key_type_id
        return [self._decode(raw[i * size:(i + 1) * size], tid) for i in range(n)]

    def _decode_values(self, raw: bytes, n: int) -> list:
        size, tid = self.value_size, self.spec.value_type_id
        fmt = self._int_format(tid, size)
        if self._ncpus:
            ncpus, slot = self._ncpus, (size + 7) & ~7
            if fmt is not None and slot == size:
                flat = memoryview(raw).cast(fmt).tolist()
                return [flat[i * ncpus:(i + 1) * ncpus] for i in range(n)]
            stride = slot * ncpus
            return [[self._decode(raw[i * stride + c * slot:i * stride + c * slot + size], tid) for c in range(ncpus)]
                    for i in range(n)]
        if fmt is not None:
            return memoryview(raw).cast(fmt).tolist()
        return [self._decode(raw[i * size:(i + 1) * size], tid) for i in range(n)]

    def _encode_keys(self, keys: list) -> bytes:
        fmt = self._int_format(self.spec.key_type_id, self.key_size)
        if fmt is not None:
            packed = _pack_ints(fmt, keys)
            if packed is not None:
                return packed
        return b"".join(self._key(k) for k in keys)

    def _encode_values(self, values: list) -> bytes:
        fmt = self._int_format(self.spec.value_type_id, self.value_size)
        if fmt is not None and (not self._ncpus or (self.value_size + 7) & ~7 == self.value_size):
            flat = values
            if self._ncpus:
                if all(isinstance(v, (list, tuple)) and len(v) == self._ncpus for v in values):
                    flat = [x for v in values for x in v]
                else:
                    flat = None
            packed = _pack_ints(fmt, flat) if flat is not None else None
            if packed is not None:
                return packed
        return b"".join(self._encode_value(v) for v in values)

    def attach_struct_ops(self):
        """Register this struct_ops map (a ``.struct_ops`` or ``.struct_ops.link`` variable,
        e.g. a tcp_congestion_ops); ``close()`` on the result unregisters it.  See
        :func:`pybpf.links.struct_ops.attach_struct_ops`."""
        from .links.struct_ops import attach_struct_ops
        return attach_struct_ops(self)

    # -- notebooks (pybpf.display) -----------------------------------------------------

    def histogram(self, key=None, unit: str = "value"):
        """The log2 histogram under ``key`` (all entries added up without one) of a map of
        libbpf-tools-style ``struct hist { __u32 slots[N]; }`` values: :class:`pybpf.display.Histogram`."""
        from .display import map_histogram
        return map_histogram(self, key, unit)

    def _repr_html_(self) -> str:
        from .display import map_html
        return map_html(self)

    def _repr_pretty_(self, p, cycle) -> None:
        from .display import map_text
        p.text(map_text(self))


# bytes asked for in one batch call (keys and values) when no batch_size is given
_BATCH_BYTES = 4 << 20
# integer sizes -> (unsigned, signed) memoryview / array formats
_INT_CODES = {1: ("B", "b"), 2: ("H", "h"), 4: ("I", "i"), 8: ("Q", "q")}
_HASH_TYPES = frozenset({MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH})
_ARRAY_TYPES = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.PROG_ARRAY, MapType.PERF_EVENT_ARRAY,
                          MapType.CGROUP_ARRAY, MapType.ARRAY_OF_MAPS})
_READS = frozenset({"lookup", "lookup_batch"})
_ONE_AT_A_TIME = {"lookup_batch": "items()", "lookup_and_delete_batch": "items() and delete()",
                  "update_batch": "update() per element", "delete_batch": "delete() per key"}


def _pack_ints(fmt: str, values: list) -> bytes | None:
    """``values`` packed as native integers of ``fmt``; None if one is not a plain int in range."""
    import array
    try:
        if any(type(v) is not int for v in values):
            return None
        return array.array(fmt, values).tobytes()
    except (OverflowError, TypeError):
        return None


def _ndarray_over(raw: bytearray, shape, dt, strides=None):
    """A numpy array of ``dt`` over the bytes of ``raw`` (no copy)."""
    from .spec.dtypes import numpy
    return numpy().ndarray(shape, dt, buffer=raw, strides=strides)


def _kernel_lacks_cmd(command: str) -> bool:
    from .kernel.btf import enum_names, running_btf
    names = enum_names(running_btf(None), "bpf_cmd")
    return names is not None and command not in names


_MISSING = object()
