"""pybpf._gcpause: the cyclic garbage collector does not run while an object is opened or
loaded (issue 15: it ran 32 times during a first load, ~4 ms, for 583 objects its next run
frees as well), and its state is the user's again afterwards, whatever happened inside."""

from __future__ import annotations

import gc
import os
import threading

import pytest

import pybpf
from pybpf._gcpause import gc_paused
from pybpf.errors import ObjectError

from conftest import program


@pytest.fixture
def collections():
    """The collections the cyclic GC starts while the test runs, each as (generation, whether
    a gc_paused section was running)."""
    from pybpf import _gcpause
    started = []

    def cb(phase, info):
        if phase == "start":
            started.append((info["generation"], _gcpause._state["depth"] > 0))
    gc.callbacks.append(cb)
    was = gc.isenabled()
    gc.enable()
    try:
        yield started
    finally:
        gc.callbacks.remove(cb)
        if not was:
            gc.disable()


def _fresh_copy(tmp_path, name: str) -> str:
    """The object with other trailing bytes: a new object to the spec cache (parsed again)."""
    path = tmp_path / f"{name}.o"
    with open(program(name), "rb") as f:
        path.write_bytes(f.read() + os.urandom(8))
    return str(path)


def test_no_collection_while_an_object_is_parsed(collections, tmp_path, monkeypatch):
    """None inside the section; at most the one that was due, as the section ends (the parse
    allocates enough for several: this fails without the section)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = _fresh_copy(tmp_path, "tools_runqlat")
    collections.clear()
    spec = pybpf.open(path)
    seen = list(collections)
    assert spec.programs and gc.isenabled()
    assert not [c for c in seen if c[1]] and len(seen) <= 1, seen
    junk = [[i] for i in range(5000)]                    # and afterwards it runs again
    del junk
    assert len(collections) > len(seen)


@pytest.mark.kernel
def test_no_collection_while_an_object_is_loaded(collections, tmp_path, monkeypatch, no_fd_leak):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = _fresh_copy(tmp_path, "tools_runqlat")
    collections.clear()
    obj = pybpf.load(path)
    seen = list(collections)
    try:
        assert gc.isenabled()
        assert not [c for c in seen if c[1]] and len(seen) <= 1, seen
    finally:
        obj.close()


def test_the_collector_state_is_the_users_again(tmp_path):
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"\x7fELF" + b"\xff" * 60)
    was = gc.isenabled()
    try:
        gc.enable()
        with pytest.raises(ObjectError):
            pybpf.open(str(bad))
        assert gc.isenabled()                            # enabled again after a failure
        gc.disable()
        pybpf.open(program("tools_runqlat"))
        assert not gc.isenabled()                        # the user's off stays off
    finally:
        gc.enable() if was else gc.disable()


def test_sections_nest_and_overlap_in_threads():
    was = gc.isenabled()
    gc.enable()
    try:
        inside, release = threading.Event(), threading.Event()

        def other():
            with gc_paused():
                inside.set()
                release.wait(5)
        t = threading.Thread(target=other)
        with gc_paused():
            with gc_paused():
                assert not gc.isenabled()
            assert not gc.isenabled()                    # the inner end is not the last
            t.start()
            assert inside.wait(5)
        assert not gc.isenabled()                        # the other thread's section still runs
        release.set()
        t.join(5)
        assert gc.isenabled()
    finally:
        gc.enable() if was else gc.disable()
