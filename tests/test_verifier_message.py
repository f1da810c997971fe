"""The source line a verifier rejection names (pybpf.VerifierError's message).

The expected file:line and text come from the C source files themselves: the
kernel test finds the marked line in programs/verifier_fail.bpf.c; the offline
tests check, for every instruction of real objects, that the line named is the
one of the last line_info record at or before it in its function (the rule the
verifier's own log annotation follows), read back from the .bpf.c file.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import pybpf
from pybpf.loader import _verifier_summary
from pybpf.loader.relocate import link_program

from conftest import PROGRAMS, ROOT, program

MARKER = "/* deliberate out-of-bounds */"      # on the line of verifier_fail.bpf.c the verifier rejects


def marked_line(name: str = "verifier_fail", marker: str = MARKER) -> tuple[int, str]:
    """(line number, text) of the one line of programs/NAME.bpf.c holding MARKER."""
    lines = (PROGRAMS / f"{name}.bpf.c").read_text().splitlines()
    found = [(n, l.strip()) for n, l in enumerate(lines, 1) if marker in l]
    assert len(found) == 1, found
    return found[0]


def source_line(name: str, n: int) -> str:
    return (PROGRAMS / f"{name}.bpf.c").read_text().splitlines()[n - 1].strip()


def where_line(message: str) -> str:
    (where,) = [l for l in message.splitlines() if l.startswith("  at ")]
    return where


@pytest.mark.kernel
def test_rejection_names_the_marked_line(no_fd_leak):
    n, text = marked_line()
    with pytest.raises(pybpf.VerifierError) as exc:
        pybpf.load(program("verifier_fail"))
    assert where_line(str(exc.value)) == f"  at verifier_fail.bpf.c:{n} (in oob): {text}"
    # the instruction named is the last one the verifier reached, and the kernel's own log
    # annotates the same line
    insns = re.findall(r"^(\d+): \(", exc.value.log, re.M)
    assert f"  instruction {insns[-1]}: (" in str(exc.value)
    assert f"; {text} @ verifier_fail.bpf.c:{n}" in exc.value.log


@pytest.mark.kernel
def test_the_kernel_log_alone_names_the_marked_line(no_fd_leak):
    """From the verifier's own annotations (no line_info of ours): the last one before the
    instruction refused, out of the several in the log."""
    n, text = marked_line()
    with pytest.raises(pybpf.VerifierError) as exc:
        pybpf.load(program("verifier_fail"))
    assert len(re.findall(r"^; ", exc.value.log, re.M)) > 2
    reason, details = _verifier_summary(exc.value.log)
    assert reason.startswith("invalid access to map value")
    assert where_line(details) == f"  at verifier_fail.bpf.c:{n}: {text}"


@pytest.mark.kernel
def test_cli_rejection_names_the_marked_line():
    n, text = marked_line()
    proc = subprocess.run([sys.executable, "-m", "pybpf", "load", program("verifier_fail")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"  at verifier_fail.bpf.c:{n} (in oob): {text}\n" in proc.stderr, proc.stderr


def expected_line(name: str, linked, btf, insn: int) -> tuple[int, str] | None:
    """The rule: the last line_info record at or before INSN within INSN's function."""
    fn, start = linked.function_at(insn)
    recs = [r for r in linked.line_info if start <= r[0] <= insn]
    if not recs:
        return None
    n = max(recs, key=lambda r: r[0])[3] >> 10
    return n, source_line(name, n)


def synthetic_log(insn: int) -> str:
    """A verifier log whose last instruction reached is INSN, as the kernel writes one."""
    return (f"0: R1=ctx() R10=fp0\n0: (b7) r6 = 0                        ; R6=0\n"
            f"{insn}: (61) r6 = *(u32 *)(r0 +0)\ninvalid access to map value, value_size=16 off=32 size=4\n"
            f"processed {insn + 1} insns (limit 1000000) max_states_per_insn 0 total_states 0\n")


@pytest.mark.parametrize("name, prog", [("verifier_fail", "oob"), ("user_ringbuf", "kill_exit"),
                                        ("calls_test", "compute")])
def test_every_instruction_names_its_line(name, prog):
    """At every instruction of the linked program (subprograms too), the first and last
    instruction of each line_info record included: the line and text of that record."""
    spec = pybpf.open(program(name))
    linked = link_program(spec, spec.programs[prog])
    starts = {r[0] for r in linked.line_info}
    assert len(starts) > 3
    checked = 0
    for fn, start in linked.layout:
        for insn in range(start, start + fn.insn_cnt):
            want = expected_line(name, linked, spec.btf, insn)
            if want is None:
                continue
            reason, details = _verifier_summary(synthetic_log(insn), linked, spec.btf)
            assert reason.startswith("invalid access to map value")
            assert where_line(details) == f"  at {name}.bpf.c:{want[0]} (in {fn.name}): {want[1]}", insn
            checked += 1
    assert checked >= len(starts)


@pytest.mark.parametrize("name, prog", [("user_ringbuf", "kill_exit"), ("calls_test", "compute")])
def test_no_line_from_another_function(name, prog):
    """Without a line_info record at the start of a subprogram (a BTF.ext that has none), its
    first instructions name no line: the previous function's last line is not theirs."""
    spec = pybpf.open(program(name))
    linked = link_program(spec, spec.programs[prog])
    for fn, start in linked.layout[1:]:
        linked = link_program(spec, spec.programs[prog])
        linked.line_info = [r for r in linked.line_info if r[0] != start]
        first_rec = min((r[0] for r in linked.line_info if r[0] > start), default=start + fn.insn_cnt)
        for insn in range(start, min(first_rec, start + fn.insn_cnt)):
            _, details = _verifier_summary(synthetic_log(insn), linked, spec.btf)
            assert not [l for l in details.splitlines() if l.startswith("  at ")], (fn.name, insn, details)


def test_line_from_the_log_without_line_info():
    """Without our line_info (no BTF), the kernel's own annotation before the instruction."""
    n, text = marked_line()
    log = (f"; {text} @ verifier_fail.bpf.c:{n}\n9: (67) r1 <<= 32\n13: (61) r6 = *(u32 *)(r0 +0)\n"
           f"invalid access to map value, value_size=16 off=32 size=4\nprocessed 13 insns\n")
    reason, details = _verifier_summary(log)
    assert reason == "invalid access to map value, value_size=16 off=32 size=4"
    assert where_line(details) == f"  at verifier_fail.bpf.c:{n}: {text}"
    assert "  instruction 13: (61) r6 = *(u32 *)(r0 +0)" in details.splitlines()
