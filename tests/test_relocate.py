"""Layer 3, pure: linking programs (subprograms, callbacks, map references) without a kernel.

The expected call targets come from the C sources: compute() passes sum_cb to
bpf_loop, each_cb to bpf_for_each_map_elem, then calls twice() and add3();
link_main() calls sum_sq() (which calls sq() twice) and sq().
"""

from __future__ import annotations

import pytest

import pybpf
from pybpf.loader.relocate import link_program
from pybpf.spec import insn as I

from conftest import PROGRAMS, program

LD_IMM64 = 0x18
CALL = 0x85
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_PSEUDO_CALL = 1
BPF_PSEUDO_FUNC = 4


def decode_all(insns):
    """[(index, code, dst, src, off, imm)] of every instruction slot."""
    return [(i, *I.decode(insns, i)) for i in range(len(insns) // 8)]


def linked(obj: str, prog: str):
    spec = pybpf.open(program(obj))
    return spec, link_program(spec, spec.programs[prog])


def starts(lp) -> dict:
    """Function name -> its first instruction in the linked program."""
    return {fn.name: start for fn, start in lp.layout}


def bpf_to_bpf_targets(lp) -> list:
    """(insn, kind, target function) of every call and callback in program order."""
    by_start = {start: fn.name for fn, start in lp.layout}
    out = []
    for i, code, _dst, src, _off, imm in decode_all(lp.insns):
        if code == CALL and src == BPF_PSEUDO_CALL:
            out.append((i, "call", by_start.get(i + imm + 1, f"<not a function start: {i + imm + 1}>")))
        elif code == LD_IMM64 and src == BPF_PSEUDO_FUNC:
            out.append((i, "callback", by_start.get(i + imm + 1, f"<not a function start: {i + imm + 1}>")))
    return out


# -- subprograms and callbacks -----------------------------------------------------------

def test_compute_appends_each_subprogram_once():
    spec, lp = linked("calls_test", "compute")
    names = [fn.name for fn, _ in lp.layout]
    assert names[0] == "compute"
    assert sorted(names[1:]) == ["add3", "each_cb", "sum_cb", "twice"]
    # back to back, each once, nothing else in between or after
    pos = 0
    for fn, start in lp.layout:
        assert start == pos
        pos += fn.insn_cnt
    assert lp.insn_cnt == pos
    # the appended bodies are the .text functions (these have no relocations to patch)
    for fn, start in lp.layout[1:]:
        assert fn is spec.functions[fn.name]
        assert bytes(lp.insns[start * 8:(start + fn.insn_cnt) * 8]) == fn.insns


def test_compute_call_and_callback_targets():
    _, lp = linked("calls_test", "compute")
    assert [(kind, target) for _, kind, target in bpf_to_bpf_targets(lp)] == [
        ("callback", "sum_cb"), ("callback", "each_cb"), ("call", "twice"), ("call", "add3")]
    # everything calling into the subprograms sits in compute itself
    compute_len = lp.layout[0][0].insn_cnt
    assert all(i < compute_len for i, _, _ in bpf_to_bpf_targets(lp))


def test_helper_calls_are_left_alone():
    spec, lp = linked("calls_test", "compute")
    original = spec.programs["compute"].insns
    helpers = [(i, imm) for i, code, _d, src, _o, imm in decode_all(original) if code == CALL and src == 0]
    assert helpers, "compute calls bpf_loop and bpf_for_each_map_elem"
    for i, imm in helpers:
        assert I.decode(lp.insns, i)[2:] == (0, 0, imm)


def test_second_program_in_same_section_links_its_own_copy():
    spec, lp = linked("calls_test", "compute2")
    assert [fn.name for fn, _ in lp.layout] == ["compute2", "add3"]
    assert [(kind, target) for _, kind, target in bpf_to_bpf_targets(lp)] == [("call", "add3")]
    # the spec itself is not modified by linking: compute still links the same way
    _, again = linked("calls_test", "compute")
    assert [(k, t) for _, k, t in bpf_to_bpf_targets(again)] == \
        [("callback", "sum_cb"), ("callback", "each_cb"), ("call", "twice"), ("call", "add3")]


def test_link_is_deterministic_and_does_not_mutate_spec():
    spec = pybpf.open(program("calls_test"))
    before = {name: fn.insns for name, fn in spec.functions.items()}
    a = link_program(spec, spec.programs["compute"])
    b = link_program(spec, spec.programs["compute"])
    assert a.insns == b.insns and a.func_info == b.func_info and a.line_info == b.line_info
    assert {name: fn.insns for name, fn in spec.functions.items()} == before


def test_repeated_and_nested_calls_append_the_callee_once():
    # link_main calls sum_sq (relocated against .text with an offset in imm) and sq;
    # sum_sq calls sq twice through relative calls inside .text (no relocation)
    _, lp = linked("link_test", "link_main")
    names = [fn.name for fn, _ in lp.layout]
    assert sorted(names) == ["link_main", "sq", "sum_sq"]
    targets = bpf_to_bpf_targets(lp)
    s = starts(lp)
    in_main = [t for i, _, t in targets if i < s["link_main"] + lp.layout[0][0].insn_cnt]
    in_sum_sq = [t for i, _, t in targets if s["sum_sq"] <= i < s["sum_sq"] + 7]
    assert in_main == ["sum_sq", "sq"]
    assert in_sum_sq == ["sq", "sq"]
    assert len(targets) == 4


def test_not_autoloaded_program_links_too():
    _, lp = linked("link_test", "not_autoloaded")
    assert [fn.name for fn, _ in lp.layout] == ["not_autoloaded", "sq"]
    assert [t for _, _, t in bpf_to_bpf_targets(lp)] == ["sq"]


# -- func_info / line_info -------------------------------------------------------------------

@pytest.mark.parametrize("obj, prog", [("calls_test", "compute"), ("calls_test", "compute2"),
                                       ("link_test", "link_main"), ("ringbuf_test", "drain"),
                                       ("user_ringbuf", "kill_exit"), ("globals_test", "read_globals")])
def test_func_info_rebased(obj, prog):
    spec, lp = linked(obj, prog)
    insns = [i for i, _ in lp.func_info]
    assert insns[0] == 0
    assert all(a < b for a, b in zip(insns, insns[1:])), insns
    # exactly one per function in the layout, at its start, naming its BTF FUNC
    assert [(i, spec.btf[t].name) for i, t in lp.func_info] == [(start, fn.name) for fn, start in lp.layout]
    assert all(spec.btf[t].kind.name == "FUNC" for _, t in lp.func_info)


@pytest.mark.parametrize("obj, prog", [("calls_test", "compute"), ("link_test", "link_main"),
                                       ("verifier_fail", "oob")])
def test_line_info_rebased(obj, prog):
    spec, lp = linked(obj, prog)
    insns = [rec[0] for rec in lp.line_info]
    assert insns[0] == 0
    assert all(a < b for a, b in zip(insns, insns[1:]))
    assert all(0 <= i < lp.insn_cnt for i in insns)
    # every record of every linked function is there, moved by the function's new start
    expected = []
    for fn, start in lp.layout:
        lo = fn.sec_insn_off * 8
        for r in spec.btf_ext.line_info[fn.section]:
            if lo <= r.insn_off < lo + len(fn.insns):
                expected.append((r.insn_off // 8 - fn.sec_insn_off + start, r.file_name_off, r.line_off,
                                 r.line_col))
    assert sorted(lp.line_info) == sorted(expected)
    # each function starts with a line record
    assert {start for _, start in lp.layout} <= set(insns)


def test_line_info_of_appended_subprogram_points_at_its_source():
    spec, lp = linked("calls_test", "compute")
    start = starts(lp)["add3"]
    first = next(rec for rec in lp.line_info if rec[0] == start)
    assert "add3" in spec.btf.string(first[2])          # line_off: the source line text


# -- map references -----------------------------------------------------------------------------

def test_map_reference_to_btf_map():
    _, lp = linked("calls_test", "compute")
    assert len(lp.map_refs) == 1
    ref = lp.map_refs[0]
    assert (ref.map_name, ref.offset) == ("arr", None)
    assert I.decode(lp.insns, ref.insn)[0] == LD_IMM64
    # &arr is loaded between the two callbacks' ld_imm64 (bpf_for_each_map_elem(&arr, each_cb, ...))
    callbacks = [i for i, kind, _ in bpf_to_bpf_targets(lp) if kind == "callback"]
    assert callbacks[0] < ref.insn < callbacks[1]


def test_map_references_to_globals_use_variable_offsets():
    spec, lp = linked("globals_test", "read_globals")
    by_pos = {(v.map.name, v.offset): name for name, v in spec.variables.items()}
    got = [(by_pos.get((r.map_name, r.offset)), r.map_name) for r in lp.map_refs]
    # read_globals reads rodata_param, writes bss_seen_param and bss_result, reads and bumps data_counter
    assert sorted(name for name, _ in got) == ["bss_result", "bss_seen_param", "data_counter", "rodata_param"]
    for r in lp.map_refs:
        assert I.decode(lp.insns, r.insn)[0] == LD_IMM64


def test_map_references_through_section_symbols():
    # static globals: relocated against the .data/.bss section symbol, offset in the imm
    spec, lp = linked("link_test", "link_main")
    got = sorted((r.map_name, r.offset) for r in lp.map_refs)
    v = spec.variables
    assert got == sorted([(v["bias"].map.name, v["bias"].offset), (v["runs"].map.name, v["runs"].offset),
                          (v["last_out"].map.name, v["last_out"].offset)])
    assert v["runs"].offset != 0     # the imm addend matters


def test_with_map_fds_patches_src_reg_and_imm():
    _, lp = linked("globals_test", "read_globals")
    fds = {name: 100 + i for i, name in enumerate(sorted({r.map_name for r in lp.map_refs}))}
    original = bytes(lp.insns)
    out = lp.with_map_fds(fds)
    assert bytes(lp.insns) == original            # a copy: the linked program is reusable
    patched = set()
    for r in lp.map_refs:
        code, _dst, src, _off, imm = I.decode(out, r.insn)
        assert (code, src, imm) == (LD_IMM64, BPF_PSEUDO_MAP_VALUE, fds[r.map_name])
        assert I.decode(out, r.insn + 1)[4] == r.offset
        patched |= {r.insn, r.insn + 1}
    # nothing else changed
    for i in range(lp.insn_cnt):
        if i not in patched:
            assert out[i * 8:i * 8 + 8] == original[i * 8:i * 8 + 8], i


def test_with_map_fds_for_btf_map():
    _, lp = linked("calls_test", "compute")
    out = lp.with_map_fds({"arr": 77})
    ref = lp.map_refs[0]
    code, _dst, src, _off, imm = I.decode(out, ref.insn)
    assert (code, src, imm) == (LD_IMM64, BPF_PSEUDO_MAP_FD, 77)
    assert I.decode(out, ref.insn + 1)[4] == 0


def test_every_program_of_every_object_links():
    for path in sorted(PROGRAMS.glob("*.o")):
        spec = pybpf.open(path)
        for prog in spec.programs.values():
            lp = link_program(spec, prog)
            assert lp.insn_cnt >= prog.function.insn_cnt
            for i, _kind, target in bpf_to_bpf_targets(lp):
                assert not target.startswith("<"), f"{path.name}:{prog.name}: insn {i} -> {target}"
            for r in lp.map_refs:
                assert r.map_name in spec.maps
