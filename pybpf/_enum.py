"""IntEnum: pybpf's integer enums (the kernel's UAPI numbers, BTF kinds, CO-RE kinds).

A class body of ``NAME = int`` lines becomes members that are ints (they compare,
hash, format and serialize as their value) with a ``name`` and a ``value``, as
``enum.IntEnum`` gives: ``MapType.HASH``, ``MapType(1)``, ``MapType["HASH"]``,
``list(MapType)`` (aliases left out), ``MapType.__members__`` (aliases kept),
``repr`` ``<MapType.HASH: 1>`` and ``str``/``format`` the number (Python 3.11's
IntEnum).  pybpf does not use the ``enum`` module for them: importing it and
building its ~400 members took ~5 ms of every process that loads an object
(tools/bench_load.py), more than the syscalls of a typical load.

Only public names bound to a plain ``int`` become members; methods, properties
and ``_private`` names stay ordinary class attributes.  Members cannot be
reassigned or deleted.
"""

from __future__ import annotations

from types import MappingProxyType


class _IntEnumType(type):
    def __new__(mcls, name, bases, ns):
        values = {k: v for k, v in ns.items() if not k.startswith("_") and type(v) is int}
        for k in values:
            del ns[k]
        cls = super().__new__(mcls, name, bases, ns)
        by_value: dict = {}
        by_name: dict = {}
        for k, v in values.items():
            member = by_value.get(v)
            if member is None:                  # the first name of a value is its own; others alias it
                member = int.__new__(cls, v)
                member._name_ = k
                by_value[v] = member
            by_name[k] = member
            type.__setattr__(cls, k, member)
        type.__setattr__(cls, "_value2member_map_", by_value)
        type.__setattr__(cls, "_member_map_", by_name)
        return cls

    def __call__(cls, value):
        """The member of ``value`` (ValueError if there is none)."""
        try:
            return cls._value2member_map_[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__qualname__}") from None

    def __getitem__(cls, name: str):
        return cls._member_map_[name]

    def __iter__(cls):
        return iter(cls._value2member_map_.values())

    def __reversed__(cls):
        return reversed(list(cls._value2member_map_.values()))

    def __len__(cls) -> int:
        return len(cls._value2member_map_)

    def __contains__(cls, value) -> bool:
        """A member of this enum, or a value one of its members has (Python 3.12's rule)."""
        if isinstance(value, cls):
            return True
        try:
            return value in cls._value2member_map_
        except TypeError:
            return False

    @property
    def __members__(cls):
        """Every name, aliases included, to its member (read-only)."""
        return MappingProxyType(cls._member_map_)

    def __setattr__(cls, name, value):
        if name in cls.__dict__.get("_member_map_", ()):
            raise AttributeError(f"cannot reassign member {name!r} of {cls.__qualname__}")
        super().__setattr__(name, value)

    def __delattr__(cls, name):
        if name in cls.__dict__.get("_member_map_", ()):
            raise AttributeError(f"cannot delete member {name!r} of {cls.__qualname__}")
        super().__delattr__(name)


class IntEnum(int, metaclass=_IntEnumType):
    """Base of an integer enum (see the module's docstring)."""

    @property
    def name(self) -> str:
        return self._name_

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._name_}: {int(self)}>"

    __str__ = int.__repr__
    __format__ = int.__format__

    def __reduce_ex__(self, protocol):
        return type(self), (int(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self
