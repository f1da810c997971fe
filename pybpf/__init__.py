"""pybpf: a pure-Python eBPF loader (no libbpf)."""

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__all__ = list(_errors_all)
