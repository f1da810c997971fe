"""RSS over many load/close cycles of the objects under programs/.

    sudo python tools/rss_cycles.py [CYCLES] [--json]

Each cycle loads one object (round robin over every object under programs/ that
this kernel loads), reads its typed maps and globals, opens and closes its ring
buffers, attaches what it can and closes everything.  The first round (each
object once) is the warm-up: imports, the running kernel's BTF, the per-kernel
name index.  Those are paid once per process and do not grow with the number of
cycles.  The figure that matters is the growth from the end of the warm-up to
the last cycle, measured as resident memory (/proc/self/statm) after a GC.
"""
from __future__ import annotations

import gc
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pybpf  # noqa: E402

RINGBUF, USER_RINGBUF = 27, 31


def rss_mb() -> float:
    """Resident memory of this process in MB (10**6 bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def cycle(path: str) -> None:
    """Load, use and close one object."""
    with pybpf.load(path) as obj:
        for m in obj.maps.values():
            if m.value_type is not None and m.type in (1, 2):      # hash, array: typed items
                for _ in zip(range(1), m.items()):
                    pass
        for v in obj.variables.values():
            repr(v.get())
        for m in obj.maps.values():
            if m.type == RINGBUF:
                pybpf.RingBuffer(m, lambda r: None).close()
            elif m.type == USER_RINGBUF:
                pybpf.UserRingBuffer(m).close()
        try:
            obj.attach()
        except pybpf.Error:        # e.g. a kprobe on a kernel without kprobes: the rest stays attached
            pass


def loadable() -> tuple[list[str], dict[str, str]]:
    """The objects under programs/ this kernel loads, and why the others are left out."""
    ok, refused = [], {}
    for path in sorted((ROOT / "programs").glob("*.o")):
        try:
            cycle(str(path))
            ok.append(str(path))
        except pybpf.Error as e:
            refused[path.name] = str(e).splitlines()[0]
    return ok, refused


def main(cycles: int) -> dict:
    objects, refused = loadable()
    gc.collect()
    start = rss_mb()
    marks = {}
    for i in range(cycles):
        cycle(objects[i % len(objects)])
        if (i + 1) % 100 == 0 or i + 1 == cycles:
            gc.collect()
            marks[i + 1] = round(rss_mb(), 2)
    return {"objects": len(objects), "refused": refused, "cycles": cycles,
            "warm_rss_mb": round(start, 2), "marks": marks,
            "growth_mb": round(marks[cycles] - start, 2)}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    result = main(int(args[0]) if args else 1000)
    if "--json" in sys.argv:
        print(json.dumps(result))
    else:
        print(f"{result['objects']} objects, {result['cycles']} cycles; "
              f"RSS after the warm-up round {result['warm_rss_mb']} MB")
        for n, mb in result["marks"].items():
            print(f"  after {n:5d} cycles: {mb} MB")
        print(f"growth: {result['growth_mb']} MB")
        for name, why in result["refused"].items():
            print(f"  left out {name}: {why}")
