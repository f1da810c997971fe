"""The base of every pybpf object that owns kernel resources (fds, mmaps, links),
and the critical sections that keep an interrupt from orphaning one.

Why sections: a signal handler (Python's ``KeyboardInterrupt`` for SIGINT)
runs between two bytecodes of the main thread, for example right after the
ctypes call that made a new fd returned and before the fd was stored
anywhere.  The fd is then open with no owner, and nothing can ever close it.
Inside :func:`deferred_signals` the handlers of SIGINT and SIGTERM only
record the signal; the section ends by handing the new fd to its owner, and
the original handler runs then, where every fd has an owner.  Handlers only
ever run in the main thread, so other threads need no section.
"""

from __future__ import annotations

# _signal and _thread, the cores of signal and threading: signal.signal/getsignal wrap every
# call in enum conversions (~5 us each, ~16 us a section, 20+ sections a load), and importing
# signal and threading (with enum) took ~3 ms of every process
import _signal
import _thread
import sys

#: the signals whose Python handlers a section defers (SIGTERM: the CLI raises KeyboardInterrupt on it)
DEFERRED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM)

#: the thread that imported pybpf: the main thread unless ``threading`` says otherwise.  Python
#: runs signal handlers only in the main thread; ``threading`` records it the same way, as the
#: thread that first imported it, and a program that starts threads has imported it.
_IMPORTING_THREAD = _thread.get_ident()


def _in_main_thread() -> bool:
    threading = sys.modules.get("threading")
    if threading is not None:
        return _thread.get_ident() == threading.main_thread().ident
    return _thread.get_ident() == _IMPORTING_THREAD


class Resource:
    """A context manager that calls ``close()`` when the ``with`` block ends.

    Subclasses release everything they own in ``close()``; a second ``close()``
    releases what a first one could not (it raised), and is a no-op otherwise.
    """

    __slots__ = ()

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _State:
    depth = 0            # nesting of sections in the main thread
    saved: dict = {}     # signum -> the handler a section replaced
    pending: list = []   # (signum, frame) recorded during the section


_state = _State()


def _record(signum, frame) -> None:
    _state.pending.append((signum, frame))


def _install(signum: int, handler) -> BaseException | None:
    """signal.signal() that always installs: it first runs the handlers of pending signals
    (CPython checks them before changing a handler), and one of those may raise; then it is
    called again.  Returns what a handler raised, for the caller to raise once all is in place."""
    raised = None
    while True:
        try:
            _signal.signal(signum, handler)
            return raised
        except BaseException as e:       # a pending signal's handler raised (KeyboardInterrupt...)
            if raised is None:
                raised = e


def interrupt_pending() -> bool:
    """True inside a section that has recorded a signal: long work that may be given up
    (a syscall that failed with EINTR, a verifier run that returned EAGAIN) should stop
    and let the section end, where the handler runs."""
    return bool(_state.pending)


class deferred_signals:
    """A critical section: SIGINT/SIGTERM handlers written in Python run when it ends.

    Use it around "syscall returns an fd" → "the fd is stored in its owner"; keep
    it short (a syscall and a few assignments).  Nested sections end with the
    outermost one.  ``on_interrupt(resource)`` names something the section made
    that nobody owns yet: if a deferred handler is about to raise at the end of
    the section, ``resource.close()`` runs first, so the exception leaves nothing
    open behind it.  Handlers the user installed run too, with the recorded frame.
    """

    __slots__ = ("_main", "_made")

    def __init__(self):
        self._main = _in_main_thread()
        self._made = []

    def on_interrupt(self, resource) -> None:
        self._made.append(resource)

    def __enter__(self):
        if not self._main:
            return self
        st = _state
        if st.depth == 0:
            saved = {}
            st.saved = saved
            st.pending = []
            try:
                for signum in DEFERRED_SIGNALS:
                    handler = _signal.getsignal(signum)
                    if callable(handler):        # SIG_DFL/SIG_IGN/None: nothing runs in Python
                        saved[signum] = handler
                        raised = _install(signum, _record)
                        if raised is not None:   # a signal pending before the section: not ours to hold
                            raise raised
            except BaseException:
                self._restore()
                raise
        st.depth += 1
        return self

    def _restore(self) -> BaseException | None:
        st = _state
        saved, st.saved = st.saved, {}
        raised = None
        for signum, handler in saved.items():
            r = _install(signum, handler)
            raised = raised or r
        return raised

    def __exit__(self, et, ev, tb) -> bool:
        if not self._main:
            return False
        st = _state
        st.depth -= 1
        if st.depth:
            return False
        saved = dict(st.saved)
        raised = self._restore()
        pending, st.pending = st.pending, []
        try:
            # the handlers that were deferred, in the order the signals came
            for signum, frame in pending:
                handler = saved.get(signum)
                if callable(handler):
                    handler(signum, frame)
            if raised is not None:
                raise raised
        except BaseException:
            for resource in reversed(self._made):
                try:
                    resource.close()
                except Exception:
                    pass
            raise
        return False
