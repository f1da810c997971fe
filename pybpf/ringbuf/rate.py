"""Live records/s and bytes/s of ring buffers (:class:`RateMeter`)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateMeter"]


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


class RateMeter:
    """Records/s and bytes/s of ring buffers, from their counters: a live status
    line for a consumer loop (``python -m pybpf load`` can print one)::

        meter = RateMeter(rb, urb)
        while True:
            rb.poll(1000)
            print(meter.line(), end="\\r")   # rates since the previous line

    Takes anything with ``records`` and ``bytes`` counters and a ``name``
    (:class:`RingBuffer`, :class:`Ring`, :class:`UserRingBuffer`,
    :class:`pybpf.PerfBuffer`).
    """

    def __init__(self, *buffers, clock: Callable[[], float] = time.monotonic):
        self.buffers = buffers
        self._clock = clock
        self._since = clock()
        self._counts = [(b.records, b.bytes) for b in buffers]

    def rates(self) -> list[tuple[str, float, float]]:
        """(name, records/s, bytes/s) of each buffer since the previous call (or since creation)."""
        now = self._clock()
        elapsed = max(now - self._since, 1e-9)
        counts = [(b.records, b.bytes) for b in self.buffers]
        rates = [(getattr(b, "name", "?"), (r - r0) / elapsed, (n - n0) / elapsed)
                 for b, (r, n), (r0, n0) in zip(self.buffers, counts, self._counts)]
        self._since, self._counts = now, counts
        return rates

    def line(self) -> str:
        """``"events: 1.23M records/s, 29.5MB/s | ..."`` (see :meth:`rates`)."""
        return " | ".join(f"{name}: {_si(records)} records/s, {_si(nbytes)}B/s"
                          for name, records, nbytes in self.rates())

