"""Shared test fixtures.

Kernel tests carry ``@pytest.mark.kernel`` (or use the ``kernel`` fixture).  They
skip with a reason when not run as root, except when PYBPF_REQUIRE_KERNEL=1
(CI sets it): then a missing kernel is a failure, never a silent skip.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import signal
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "programs"
REQUIRE_KERNEL = os.environ.get("PYBPF_REQUIRE_KERNEL") == "1"

# The tests send real SIGINTs, to this process and to the commands it starts, and check
# what Ctrl-C does.  A shell starts its background jobs with SIGINT ignored, their children
# inherit that, and CPython installs no KeyboardInterrupt handler then: the suite gives
# itself the handler CPython would have, whatever started it.  (A handler, unlike SIG_IGN,
# is not inherited across exec: the commands the tests start get the default action.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# pybpf's disk caches (pybpf/_cache.py) start empty for every run, and the run never reads
# or leaves entries in the user's own cache; subprocesses (the CLI tests) share it
SESSION_CACHE = tempfile.mkdtemp(prefix="pybpf-test-cache-")
os.environ["XDG_CACHE_HOME"] = SESSION_CACHE
atexit.register(shutil.rmtree, SESSION_CACHE, True)


def _kernel_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_PERFMON) for the kernel"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF at /sys/kernel/btf/vmlinux"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _kernel_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "kernel" in item.keywords and not REQUIRE_KERNEL:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item):
    if REQUIRE_KERNEL and "kernel" in item.keywords and _kernel_unavailable_reason():
        pytest.fail(f"PYBPF_REQUIRE_KERNEL=1 but {_kernel_unavailable_reason()}")


def open_fds() -> set[int]:
    """The file descriptors this process has open now."""
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def no_fd_leak():
    """Fails the test if it leaves file descriptors open."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    details = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"file descriptors leaked: {details}"


def program(name: str) -> str:
    """Path of a committed object under programs/ (e.g. program('user_ringbuf'))."""
    return str(PROGRAMS / f"{name}.o")


@pytest.fixture
def not_supported_skip():
    """Turns pybpf.NotSupportedError into a skip (the only allowed skip reason)."""
    import pybpf

    class _Ctx:
        def __enter__(self):
            return self

        def __exit__(self, et, ev, tb):
            if et is not None and issubclass(et, pybpf.NotSupportedError):
                pytest.skip(f"not supported by this kernel: {ev}")
            return False

    return _Ctx()


NOT_SUPPORTED_PREFIX = "not supported by this kernel"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With PYBPF_REQUIRE_KERNEL=1 (CI), a skip is a failure unless the kernel itself
    refuses the feature (reason starting with 'not supported by this kernel')."""
    outcome = yield
    report = outcome.get_result()
    if not REQUIRE_KERNEL or not report.skipped:
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    if reason.startswith(NOT_SUPPORTED_PREFIX):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped in CI (PYBPF_REQUIRE_KERNEL=1), which must run every test: {reason}"


# -- kernel objects the tests look at (shared by the attach tests) -------------------------------

def prog_id(prog) -> int:
    """The kernel id of a loaded program."""
    return prog.id


def bpftool_json(*args):
    """``bpftool -j ARGS`` parsed ([] for no output)."""
    import json
    import subprocess
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "-j", *args], capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out) if out.strip() else []


def bpftool_link(link_id: int) -> dict:
    """``bpftool -j link show id N``."""
    return bpftool_json("link", "show", "id", str(link_id))


def link_gone(link_id: int) -> bool:
    """The kernel has no link with this id any more (bounded wait: the last reference may
    be dropped just after close returns)."""
    import errno
    import time
    import pybpf
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.constants import Cmd
    for _ in range(50):
        try:
            fd = sc.get_fd_by_id(Cmd.LINK_GET_FD_BY_ID, link_id)
        except pybpf.SyscallError as e:
            if e.errno == errno.ENOENT:
                return True
            raise
        os.close(fd)
        time.sleep(0.02)
    return False
