"""The committed BPF objects in programs/ are exactly what tools/build_programs.sh builds.

Rebuilds every programs/*.bpf.c into a temporary directory (keeping the committed
programs/vmlinux.h: it must not depend on the kernel the tests run on) and compares
bytes. On a mismatch: run tools/build_programs.sh --no-vmlinux and commit the objects.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "programs"
BUILD = ROOT / "tools" / "build_programs.sh"

SOURCES = sorted(PROGRAMS.glob("*.bpf.c"))


def _object(src: pathlib.Path) -> pathlib.Path:
    return src.with_name(src.name[: -len(".bpf.c")] + ".o")


def _missing_toolchain() -> str | None:
    if shutil.which("clang-19") is None:
        return "clang-19 not installed"
    if shutil.which("llvm-strip-19") is None:
        return "llvm-strip-19 not installed"
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        return "libbpf-dev headers not installed"
    return None


def test_sources_exist():
    assert SOURCES, "no programs/*.bpf.c"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_every_source_has_committed_object(src):
    obj = _object(src)
    assert obj.exists(), f"{obj.name} missing: run tools/build_programs.sh --no-vmlinux"
    if shutil.which("git") and (ROOT / ".git").exists():
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(obj.relative_to(ROOT))],
            cwd=ROOT,
            capture_output=True,
        )
        assert tracked.returncode == 0, f"{obj.name} is not committed"


@pytest.mark.parametrize("obj", sorted(PROGRAMS.glob("*.o")), ids=lambda p: p.name)
def test_no_checkout_path_in_object(obj):
    # line_info stores file names: they must be relative for objects to be reproducible
    assert str(ROOT).encode() not in obj.read_bytes()


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory):
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("programs")
    proc = subprocess.run(
        [str(BUILD), "--out", str(out), "--no-vmlinux"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"build_programs.sh failed:\n{proc.stdout}{proc.stderr}"
    return out


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_committed_object_matches_fresh_build(fresh_build, src):
    committed = _object(src)
    built = fresh_build / committed.name
    assert built.exists(), f"build_programs.sh did not produce {committed.name}"
    assert committed.exists(), f"{committed.name} missing: run tools/build_programs.sh --no-vmlinux"
    if committed.read_bytes() != built.read_bytes():
        version = subprocess.run(["clang-19", "--version"], capture_output=True, text=True).stdout
        pytest.fail(
            f"programs/{committed.name} differs from a fresh build: rerun "
            f"tools/build_programs.sh --no-vmlinux and commit it "
            f"(or the objects were built with another clang; this one is {version.splitlines()[0]})"
        )


def test_missing_clang_is_reported(tmp_path):
    env = dict(os.environ, CLANG="clang-19-does-not-exist")
    proc = subprocess.run(
        [str(BUILD), "--out", str(tmp_path), "--no-vmlinux"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0
    assert "apt-get install clang-19 llvm-19 libbpf-dev bpftool" in proc.stderr
