"""The exceptions pybpf raises.

Every exception pybpf raises on purpose derives from :class:`Error`, so
``except pybpf.Error`` catches them all.  Messages say what went wrong and,
where there is one, what to do about it.
"""

from __future__ import annotations

import errno as _errno
import os


class Error(Exception):
    """Base class of every pybpf exception."""


class ObjectError(Error):
    """A BPF object file (ELF, BTF, .BTF.ext, sections) is malformed or unsupported."""


class BTFError(ObjectError):
    """BTF data is malformed, or refers to a type that is not there."""


class NotSupportedError(Error):
    """The running kernel does not support (or does not permit) a feature."""


class ClosedError(Error):
    """An operation was attempted on a closed map, program, link or buffer."""


# errno values private to the kernel (include/linux/errno.h) that still reach user space
# from bpf(2) and perf_event_open(2); libc has no name or text for them ("Unknown error 524")
KERNEL_ERRNOS = {
    524: ("ENOTSUPP", "operation not supported by the kernel"),
}


def errno_text(errno: int) -> tuple[str, str]:
    """(symbolic name, description) of an errno, kernel-internal ones included:
    ``("ENOTSUPP", "operation not supported by the kernel")`` for 524."""
    if errno in KERNEL_ERRNOS:
        return KERNEL_ERRNOS[errno]
    return _errno.errorcode.get(errno, str(errno)), os.strerror(errno)


class SyscallError(Error):
    """A system call failed.

    ``errno`` holds the error number and ``command`` the name of the call
    (``"BPF_MAP_CREATE"``, ``"perf_event_open"``...).
    """

    def __init__(self, command: str, errno: int, message: str | None = None):
        self.command = command
        self.errno = errno
        name, description = errno_text(errno)
        text = f"{command}: {description} ({name})"
        if message:
            text = f"{text}: {message}"
        super().__init__(text)


class PermissionError(SyscallError):  # noqa: A001 - deliberately shadows the builtin inside pybpf
    """EPERM/EACCES from the kernel: usually missing root (CAP_BPF, CAP_PERFMON)."""


class VerifierError(SyscallError):
    """The verifier rejected a program; ``log`` holds the whole verifier log."""

    def __init__(self, command: str, errno: int, message: str, log: str):
        self.log = log
        super().__init__(command, errno, message)


class RingBufferFullError(Error):
    """A user ring buffer has no room for the requested sample."""


class TimeoutError(Error):  # noqa: A001
    """A blocking operation did not complete within its timeout."""


class InUseError(Error):
    """A kernel object already has, in this process, the one user it may have: a ring
    buffer's consumer or producer, a perf event array's :class:`pybpf.PerfBuffer`."""


__all__ = [
    "Error", "ObjectError", "BTFError", "NotSupportedError", "ClosedError",
    "SyscallError", "PermissionError", "VerifierError", "RingBufferFullError",
    "TimeoutError", "InUseError",
]
