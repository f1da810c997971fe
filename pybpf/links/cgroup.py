"""cgroup programs: BPF_LINK_CREATE on a cgroup v2 directory."""

from __future__ import annotations

import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd
from .base import Link, _fd_link


def attach_cgroup(program, cgroup) -> Link:
    """Attach a cgroup program (cgroup_skb/ingress, cgroup/connect4...) to ``cgroup`` (a cgroup v2
    directory or an open fd of one) with a BPF link of the program's expected attach type."""
    attach_type = program.spec.expected_attach_type
    if attach_type is None:
        raise Error(f"program {program.name!r} (section {program.section!r}) has no attach type: use a "
                    f"section such as cgroup_skb/ingress or cgroup_skb/egress")
    own = not isinstance(cgroup, int)

    def make() -> int:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY) if own else cgroup
        try:
            return sc.bpf(Cmd.LINK_CREATE, LinkCreateAttr(prog_fd=program.fd, target_fd=fd,
                                                          attach_type=attach_type))
        except SyscallError as e:
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to cgroup {cgroup!r} "
                                              f"as {AttachType(attach_type).name}") from None
        finally:
            if own:
                os.close(fd)
    return _fd_link(program, "cgroup", str(cgroup), make)


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` on a unified system,
    ``/sys/fs/cgroup/unified`` in hybrid mode), from /proc/self/mounts.  BPF cgroup
    programs attach to cgroup v2 directories only."""
    found = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    found.append(fields[1].replace("\\040", " "))
    except OSError:
        pass
    if not found:
        raise NotSupportedError("no cgroup v2 hierarchy is mounted (cgroup programs attach to cgroup v2 "
                                "directories): mount one with 'mount -t cgroup2 none /sys/fs/cgroup'")
    return min(found, key=len)
