"""BPF iterators (``SEC("iter/<target>")``): see :mod:`pybpf.links.iter`."""

from .links.iter import (CGROUP_ITER_ANCESTORS_UP, CGROUP_ITER_DESCENDANTS_POST, CGROUP_ITER_DESCENDANTS_PRE,
                         CGROUP_ITER_ORDER_UNSPEC, CGROUP_ITER_SELF_ONLY, Iterator, IterLinkInfo, attach_iter)

__all__ = ["Iterator", "IterLinkInfo", "attach_iter", "CGROUP_ITER_ORDER_UNSPEC", "CGROUP_ITER_SELF_ONLY",
           "CGROUP_ITER_DESCENDANTS_PRE", "CGROUP_ITER_DESCENDANTS_POST", "CGROUP_ITER_ANCESTORS_UP"]
