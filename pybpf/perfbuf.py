"""The perf buffer lives in :mod:`pybpf.ringbuf.perf`, beside the ring buffers; this
name stays so that ``import pybpf.perfbuf`` and ``from pybpf.perfbuf import PerfBuffer``
keep working (it is the same module object)."""

import sys

from .ringbuf import perf as _perf

sys.modules[__name__] = _perf
