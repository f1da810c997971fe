"""Record: the base of pybpf's plain data classes (specs, BTF records, relocations).

Each class lists its fields in ``_fields`` and writes its own ``__init__``;
this base gives them a dataclass-like ``repr``, field-wise equality and
:meth:`replace`.  pybpf does not use ``dataclasses``: importing it (it imports
``inspect``) and building ~30 classes with it took ~15 ms of every process
start (tools/bench_load.py), more than loading a typical object.
"""

from __future__ import annotations


class Record:
    __slots__ = ()
    _fields: tuple = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None     # mutable, compared by value: unhashable (as a dataclass with eq=True)

    def replace(self, **changes):
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for k, v in changes.items():
            if k not in self._fields:
                raise TypeError(f"{type(self).__name__} has no field {k!r}")
            setattr(new, k, v)
        return new
