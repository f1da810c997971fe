"""pybpf._enum.IntEnum: the integer enums of the UAPI (MapType, ProgType ...), BTF kinds and
CO-RE kinds behave as enum.IntEnum members do where users touch them (issue 15: building them
with the enum module cost ~5 ms of every load)."""

from __future__ import annotations

import copy
import enum
import json
import pickle

import pytest

from pybpf._enum import IntEnum
from pybpf.kernel.constants import AttachType, MapType, ProgType
from pybpf.kernel.helpers import Helper
from pybpf.loader.core import CoreKind
from pybpf.spec.btf import Kind


class Color(IntEnum):
    RED = 1
    GREEN = 2
    CRIMSON = 1          # alias of RED
    _hidden = 7          # private: not a member

    @property
    def shout(self) -> str:
        return self.name.upper() + "!"


class StdColor(enum.IntEnum):
    RED = 1
    GREEN = 2
    CRIMSON = 1


def test_members_are_ints_with_name_and_value():
    assert isinstance(Color.RED, int) and isinstance(Color.RED, Color)
    assert Color.RED == 1 and Color.RED.value == 1 and type(Color.RED.value) is int
    assert Color.RED.name == "RED" and Color.GREEN.name == "GREEN"
    assert Color.RED + 1 == 2 and Color.RED | 4 == 5 and hash(Color.RED) == hash(1)
    assert {1: "x"}[Color.RED] == "x" and {Color.RED: "x"}[1] == "x"
    assert Color._hidden == 7 and not isinstance(Color._hidden, Color)
    assert Color.RED.shout == "RED!"


def test_lookup_by_value_and_by_name():
    assert Color(1) is Color.RED and Color(Color.GREEN) is Color.GREEN
    assert Color["GREEN"] is Color.GREEN and Color["CRIMSON"] is Color.RED
    with pytest.raises(ValueError, match="3 is not a valid Color"):
        Color(3)
    with pytest.raises(ValueError):
        Color([1])                   # unhashable: ValueError, as enum's
    with pytest.raises(KeyError):
        Color["BLUE"]


def test_same_text_as_the_enum_module():
    """repr, str and format as Python 3.11's IntEnum (str and format give the number)."""
    for ours, std in ((Color.RED, StdColor.RED), (Color.GREEN, StdColor.GREEN)):
        assert repr(ours) == repr(std).replace("StdColor", "Color")
        assert str(ours) == str(std) and f"{ours}" == f"{std}" and f"{ours:>5}" == f"{std:>5}"
        assert f"{ours:#x}" == f"{std:#x}"
    assert json.dumps({"t": Color.GREEN}) == '{"t": 2}'


def test_iteration_and_members_as_the_enum_module():
    assert [m.name for m in Color] == [m.name for m in StdColor] == ["RED", "GREEN"]
    assert list(reversed(Color)) == [Color.GREEN, Color.RED]
    assert len(Color) == len(StdColor) == 2
    assert {k: int(v) for k, v in Color.__members__.items()} == \
        {k: int(v) for k, v in StdColor.__members__.items()}
    with pytest.raises(TypeError):
        Color.__members__["BLUE"] = 3            # read-only
    assert Color.RED in Color and 2 in Color and 3 not in Color and "RED" not in Color


def test_members_are_constant():
    with pytest.raises(AttributeError):
        Color.RED = 5
    with pytest.raises(AttributeError):
        del Color.GREEN
    assert Color.RED == 1


def test_pickle_and_copy_keep_identity():
    for m in (Color.RED, MapType.RINGBUF, Kind.STRUCT, CoreKind.FIELD_BYTE_OFFSET):
        assert pickle.loads(pickle.dumps(m)) is m
        assert copy.copy(m) is m and copy.deepcopy(m) is m


def test_uapi_enums():
    assert MapType.RINGBUF == 27 and MapType(27) is MapType.RINGBUF and MapType["HASH"] == 1
    assert MapType.CGROUP_STORAGE_DEPRECATED is MapType.CGROUP_STORAGE
    assert ProgType(6).name == "XDP" and AttachType.TCX_INGRESS == 46
    assert Helper.map_lookup_elem == 1 and Helper(1).name == "map_lookup_elem"
    assert Kind(4) is Kind.STRUCT and CoreKind.TYPE_SIZE.log_name == "type_size"
    assert "RINGBUF" in MapType.__members__ and "CGROUP_STORAGE_DEPRECATED" in MapType.__members__
    assert "CGROUP_STORAGE_DEPRECATED" not in [m.name for m in MapType]
