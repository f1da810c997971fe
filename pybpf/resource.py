"""The base of every pybpf object that owns kernel resources (fds, mmaps, links)."""


class Resource:
    """A context manager that calls ``close()`` when the ``with`` block ends.

    Subclasses release everything they own in an idempotent ``close()``.
    """

    __slots__ = ()

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
