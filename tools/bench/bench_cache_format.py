"""How fast each format reads a parsed object back: the choice behind pybpf's spec cache.

    python tools/bench/bench_cache_format.py [--rounds N]

For every object under programs/, its ObjectSpec (what ``spec/`` entries hold) is
written once in each format, then read back ``--rounds`` times; the best round of
each is kept and summed over the objects.  Formats:

- ``pickle``: ``_pickle.loads``, any class (what the cache used first);
- ``pickle, allow-list``: the C unpickler with ``find_class`` limited to pybpf's
  spec classes: what the cache uses (pybpf._cache.SpecUnpickler);
- ``json``: a tagged tree of the same objects (``{"$": class, ...}``, bytes as
  latin-1 strings) decoded by the C json module and rebuilt in Python, a format
  that cannot name any callable at all;
- ``marshal``: the same tree with real bytes, decoded by marshal and rebuilt.

Every format rebuilds an equal spec (checked on the first object)."""
from __future__ import annotations

import argparse
import io
import json
import marshal
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from pybpf import _cache  # noqa: E402
from pybpf._cache import pickle  # noqa: E402
from pybpf.errors import Error  # noqa: E402
from pybpf.spec.object import ObjectSpec  # noqa: E402


# -- a tree of plain values (for json and marshal) ---------------------------------------------

def to_tree(o, classes: dict, *, text: bool):
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    if isinstance(o, (bytes, bytearray, memoryview)):
        b = bytes(o)
        return {"$b": b.decode("latin-1") if text else b, "a": isinstance(o, bytearray)}
    if isinstance(o, (list, tuple)):
        return {"$l": [to_tree(x, classes, text=text) for x in o], "t": isinstance(o, tuple)}
    if isinstance(o, dict):
        return {"$d": [[to_tree(k, classes, text=text), to_tree(v, classes, text=text)] for k, v in o.items()]}
    cls = type(o)
    name = f"{cls.__module__}.{cls.__qualname__}"
    classes[name] = cls
    state = o.__getstate__() if hasattr(cls, "__getstate__") else o.__dict__
    if state is None or not isinstance(state, dict):
        state = {s: getattr(o, s) for s in getattr(cls, "__slots__", ()) if hasattr(o, s)}
    return {"$": name, "s": to_tree(state, classes, text=text)}


def from_tree(t, classes: dict):
    if not isinstance(t, dict):
        return t
    if "$b" in t:
        b = t["$b"].encode("latin-1") if isinstance(t["$b"], str) else t["$b"]
        return bytearray(b) if t["a"] else b
    if "$l" in t:
        items = [from_tree(x, classes) for x in t["$l"]]
        return tuple(items) if t["t"] else items
    if "$d" in t:
        return {_hashable(from_tree(k, classes)): from_tree(v, classes) for k, v in t["$d"]}
    cls = classes[t["$"]]
    o = cls.__new__(cls)
    state = from_tree(t["s"], classes)
    if hasattr(cls, "__setstate__"):
        o.__setstate__(state)
    elif hasattr(o, "__dict__"):
        o.__dict__.update(state)
    else:
        for k, v in state.items():
            setattr(o, k, v)
    return o


def _hashable(k):
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


def fingerprint(spec) -> tuple:
    """What a load uses: instructions, relocations, map definitions, BTF."""
    progs = {n: (p.section, bytes(f.insns), [(r.insn, r.symbol.name, r.type) for r in f.relocations])
             for n, p in spec.programs.items() for f in [spec.functions[p.function] if isinstance(p.function, str) else p.function]}
    maps = {n: (m.type, m.key_size, m.value_size, m.max_entries) for n, m in spec.maps.items()}
    return progs, maps, bytes(spec.btf.raw) if spec.btf is not None else None


# -- timing --------------------------------------------------------------------------------------

def best(fn, rounds: int) -> float:
    out = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    totals = {"pickle": 0.0, "pickle, allow-list": 0.0, "json": 0.0, "marshal": 0.0}
    sizes = {k: 0 for k in totals}
    n = 0
    for path in sorted((ROOT / "programs").glob("*.o")):
        try:
            spec = ObjectSpec(path.read_bytes(), path=str(path))
        except Error:
            continue
        blob = pickle.dumps(spec, protocol=-1)
        classes: dict = {}
        jtext = json.dumps(to_tree(spec, classes, text=True))
        mblob = marshal.dumps(to_tree(spec, classes, text=False))
        readers = {
            "pickle": lambda: pickle.loads(blob),
            "pickle, allow-list": lambda: _cache.SpecUnpickler(io.BytesIO(blob)).load(),
            "json": lambda: from_tree(json.loads(jtext), classes),
            "marshal": lambda: from_tree(marshal.loads(mblob), classes),
        }
        if n == 0:
            want = fingerprint(spec)
            for name, read in readers.items():
                assert fingerprint(read()) == want, f"{name} does not rebuild {path.name}"
        for name, read in readers.items():
            totals[name] += best(read, args.rounds)
        sizes["pickle"] += len(blob)
        sizes["pickle, allow-list"] += len(blob)
        sizes["json"] += len(jtext)
        sizes["marshal"] += len(mblob)
        n += 1
    base = totals["pickle"]
    print(f"{n} objects under programs/, best of {args.rounds} reads each, summed")
    print(f"{'format':20s} {'read ms':>9s} {'x pickle':>9s} {'bytes':>10s}")
    for name, t in totals.items():
        print(f"{name:20s} {t * 1e3:9.2f} {t / base:9.2f} {sizes[name]:10d}")


if __name__ == "__main__":
    main()
