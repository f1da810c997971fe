"""KernelFacts: what relocation needs to know about the target kernel, as plain values.

Like aya-obj, relocation takes the kernel's facts as inputs instead of asking
the kernel itself, so CO-RE, externs and attach targets are testable offline
(with a BTF file for another kernel) and deterministic.  ``KernelFacts.running()``
gathers them from the running kernel lazily: nothing is read until asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import Error
from ..spec.btf import BTF


class KernelFacts:
    """Facts about the kernel a program is loaded into.

    - ``btf``: vmlinux BTF (CO-RE target, typed ksyms, kfuncs, attach_btf_id);
    - ``module_btfs``: kernel module name -> split BTF on top of ``btf``;
    - ``kconfig``: ``CONFIG_*`` name -> value string as in a .config (``"y"``,
      ``"m"``, ``"123"``, ``'"text"'``), None where unknown;
    - ``kernel_version``: LINUX_KERNEL_VERSION (``(major << 16) | (minor << 8) | patch``);
    - ``ksym_address(name)``: a kernel symbol's address (kallsyms), or None.

    Each may be given as a value, or left to be found on the running kernel the
    first time it is used.
    """

    def __init__(self, *, btf: BTF | None = None, module_btfs: dict | None = None,
                 kconfig: dict | None = None, kernel_version: int | None = None,
                 ksym_address: Callable[[str], int | None] | None = None, running: bool = False):
        self._btf = btf
        self._btf_given = btf is not None or module_btfs is not None
        # module BTF is split on top of the running kernel's vmlinux: not for an injected target
        self._module_btfs = module_btfs if module_btfs is not None else ({} if btf is not None else None)
        self._kconfig = kconfig
        self._kernel_version = kernel_version
        self._ksym_address = ksym_address
        self._kallsyms: dict | None = None
        self.running_kernel = running

    @classmethod
    def running(cls, **overrides) -> KernelFacts:
        """Facts of the running kernel (each read lazily), with ``overrides`` given as values."""
        return cls(running=True, **overrides)

    # -- BTF ------------------------------------------------------------------------------

    @property
    def btf(self) -> BTF | None:
        if self._btf is None and self.running_kernel:
            from ..kernel.btf import vmlinux_btf
            self._btf = vmlinux_btf()
        return self._btf

    @property
    def module_btfs(self) -> dict:
        if self._module_btfs is None:
            self._module_btfs = {}
            if self.running_kernel and self.btf is not None:
                from ..kernel.btf import VMLINUX, module_btf
                folder = os.path.dirname(VMLINUX)
                try:
                    names = sorted(n for n in os.listdir(folder) if n != "vmlinux")
                except OSError:
                    names = []
                for name in names:
                    try:
                        self._module_btfs[name] = module_btf(name, base=self.btf)
                    except Error:
                        pass
        return self._module_btfs

    def kernel_btf_identity(self) -> str | None:
        """For the running kernel's own BTF (not one given): a name for that BTF (vmlinux and
        module BTFs) that changes when it can change (a reboot, a module loaded or unloaded),
        found without reading it; None otherwise.  Keys the disk cache of CO-RE resolutions."""
        if not self.running_kernel or self._btf_given:
            return None
        from ..kernel.btf import VMLINUX, boot_id
        folder = os.path.dirname(VMLINUX)
        boot = boot_id()
        try:
            with os.scandir(folder) as it:
                files = sorted(f"{e.name}:{e.stat().st_size}" for e in it)
        except OSError:
            return None
        if boot is None or not any(f.startswith("vmlinux:") for f in files):
            return None
        return " ".join([boot, *files])

    # -- kconfig --------------------------------------------------------------------------

    @property
    def kconfig(self) -> dict:
        if self._kconfig is None:
            self._kconfig = read_kconfig() if self.running_kernel else {}
        return self._kconfig

    @property
    def kernel_version(self) -> int:
        if self._kernel_version is None:
            self._kernel_version = running_kernel_version() if self.running_kernel else 0
        return self._kernel_version

    # -- kallsyms -------------------------------------------------------------------------

    def ksym_address(self, name: str) -> int | None:
        if self._ksym_address is not None:
            return self._ksym_address(name)
        if not self.running_kernel:
            return None
        if self._kallsyms is None or name not in self._kallsyms:
            self.prefetch_ksyms((name,))
        return self._kallsyms.get(name)

    def prefetch_ksyms(self, names) -> None:
        """Look ``names`` up in /proc/kallsyms in one pass (the running kernel only): later
        ``ksym_address`` calls for them read no file."""
        if self._ksym_address is not None or not self.running_kernel:
            return
        if self._kallsyms is None:
            self._kallsyms = {}
        wanted = {n for n in names if n not in self._kallsyms}
        if wanted:
            self._kallsyms.update(read_kallsyms(wanted))


def read_kconfig() -> dict:
    """The running kernel's config: /proc/config.gz, else /boot/config-$(uname -r). {} if neither."""
    import gzip
    text = None
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        try:
            with open(f"/boot/config-{os.uname().release}") as f:
                text = f.read()
        except OSError:
            return {}
    return parse_kconfig(text)


def parse_kconfig(text: str) -> dict:
    """``CONFIG_X=value`` lines -> {"CONFIG_X": "value"}; ``# CONFIG_X is not set`` -> "n"."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            k, _, v = line.partition("=")
            out[k] = v
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[2:-len(" is not set")]] = "n"
    return out


def running_kernel_version() -> int:
    """LINUX_KERNEL_VERSION of the running kernel, from uname (patch level capped at 255)."""
    release = os.uname().release
    nums = []
    for part in release.replace("-", ".").split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        nums.append(int(digits) if digits else 0)
    while len(nums) < 3:
        nums.append(0)
    major, minor, patch = nums
    return (major << 16) | (minor << 8) | min(patch, 255)


def read_kallsyms(names=None) -> dict:
    """/proc/kallsyms as {name: address} (addresses are 0 without CAP_SYSLOG); only ``names``
    when given, each None if absent.  The whole table is ~10 MB of text and ~200k symbols, so
    a loader asks for the few names it needs instead of keeping it."""
    out: dict = {} if names is None else dict.fromkeys(names)
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (names is None or parts[2] in out) and out.get(parts[2]) is None:
                    out[parts[2]] = int(parts[0], 16)
    except OSError:
        pass
    return out
