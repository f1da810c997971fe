"""gc_paused: Python's cyclic garbage collector held off while an object is opened or loaded.

Opening and loading an object allocate in bursts: the modules imported on first use
(pyelftools, the loader) and the parse's records.  Nearly all of it lives as long as the
process (modules) or is freed by reference counting (parse temporaries), yet the collector
ran 32 times over it during one first load of tools_runqlat.o, to free 583 objects (cycles
that imports leave): ~4 ms of the load (tools/bench_load.py, "new object").  Inside the
section the collector does not run; at the end it is enabled again if it was enabled when
the outermost section began, and the cycles made meanwhile go at its next run.  Sections nest (a load that opens its
object) and may run in several threads at once: the collector is held off until the last
one ends.
"""

from __future__ import annotations

import _thread
import gc

_lock = _thread.allocate_lock()
_state = {"depth": 0, "was_enabled": False}


class gc_paused:
    """``with gc_paused():`` a bounded stretch of allocation-heavy work (see the module)."""

    __slots__ = ()

    def __enter__(self):
        with _lock:
            if _state["depth"] == 0:
                _state["was_enabled"] = gc.isenabled()
                gc.disable()
            _state["depth"] += 1
        return self

    def __exit__(self, *exc) -> None:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["was_enabled"]:
                gc.enable()
