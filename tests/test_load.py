"""Layers 3 and 4 in the kernel: loading objects, closing them, globals, subprograms.

Expected values come from the programs' logic (programs/*.bpf.c), computed here
from the inputs the test chooses.
"""

from __future__ import annotations

import os
import struct

import pytest

import pybpf

from conftest import PROGRAMS, program

pytestmark = pytest.mark.kernel

# objects made to be refused, each with its tests (test_errors.py, test_refusals.py)
# refused by design: a verifier rejection, maps left for user space to size (profile_style, as
# libbpf-tools' profile: tests/test_cli_real_style.py sizes them), a log past 16 MiB
REFUSED = {"verifier_fail", "max_entries_unset", "long_log", "profile_style"}
LOADABLE = sorted(p.stem for p in PROGRAMS.glob("*.o") if p.stem not in REFUSED)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


# -- load / close ---------------------------------------------------------------------

@pytest.mark.parametrize("name", LOADABLE)
def test_load_and_close_every_object(name, no_fd_leak, not_supported_skip):
    spec = pybpf.open(program(name))
    with not_supported_skip:       # a program this kernel refuses (lockdown, no such attach type...)
        obj = spec.load()
    try:
        assert set(obj.maps) == set(spec.maps)
        assert set(obj.programs) == {n for n, p in spec.programs.items() if p.autoload}
        fds = [m.fd for m in obj.maps.values()] + [p.fd for p in obj.programs.values()]
        assert len(set(fds)) == len(fds) and all(fd_is_open(fd) for fd in fds)
        for name_, m in obj.maps.items():
            s = spec.maps[name_]
            # a struct_ops map's value is the kernel's bpf_struct_ops_<name>, not the object's struct (libbpf too)
            size = s.value_size if s.struct_ops is None else m._struct_ops.value_size
            assert (m.name, m.type, m.key_size, m.value_size) == (s.name, s.type, s.key_size, size)
        for name_, p in obj.programs.items():
            assert (p.name, p.section) == (name_, spec.programs[name_].section)
    finally:
        obj.close()
    assert obj.closed
    assert not any(fd_is_open(fd) for fd in fds)
    for m in obj.maps.values():
        with pytest.raises(pybpf.ClosedError):
            m.fd
    for p in obj.programs.values():
        with pytest.raises(pybpf.ClosedError):
            p.fd
    obj.close()          # idempotent


def test_load_is_open_then_load(no_fd_leak):
    with pybpf.load(program("calls_test")) as obj:
        assert isinstance(obj, pybpf.Object)
        assert obj.programs["compute2"].test_run().retval == 4
    assert obj.closed


def test_context_manager_closes_on_exception(no_fd_leak):
    with pytest.raises(RuntimeError):
        with pybpf.load(program("globals_test")) as obj:
            obj.variables["data_counter"].get()
            raise RuntimeError("boom")
    assert obj.closed


def test_same_spec_loads_twice_independently(no_fd_leak):
    spec = pybpf.open(program("globals_test"))
    with spec.load() as a, spec.load() as b:
        a.programs["read_globals"].test_run()
        a.programs["read_globals"].test_run()
        assert a.variables["data_counter"].get() == 9
        assert b.variables["data_counter"].get() == 7


def test_not_autoloaded_program_is_not_loaded(no_fd_leak):
    with pybpf.load(program("link_test")) as obj:
        assert list(obj.programs) == ["link_main"]
        with pytest.raises(KeyError, match="not_autoloaded"):
            obj.programs["not_autoloaded"]


def test_autoload_can_be_turned_on(no_fd_leak):
    spec = pybpf.open(program("link_test"))
    spec.programs["not_autoloaded"].autoload = True
    with spec.load() as obj:
        assert obj.programs["not_autoloaded"].test_run().retval == 2 * 2      # sq(2)


def test_programs_and_maps_are_read_only_mappings(no_fd_leak):
    with pybpf.load(program("maps_test")) as obj:
        with pytest.raises(TypeError):
            obj.maps["x"] = None
        with pytest.raises(KeyError, match="no map 'nope'"):
            obj.maps["nope"]
        assert sorted(obj.maps) == ["array", "hash", "lru", "percpu"]


# -- globals ------------------------------------------------------------------------------

def test_globals_initial_values_through_mmap(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        v = obj.variables
        assert v["data_counter"].get() == 7
        assert v["data_struct"].get() == struct.pack("<IH2BQ", 1, 2, 3, 4, 0x1122334455667788)
        assert v["rodata_param"].get() == 42
        assert v["rodata_name"].get() == "pybpf"            # char arrays read as text
        assert v["bss_result"].get() == 0 and v["bss_seen_param"].get() == 0


def test_data_counter_increments_across_runs(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        prog, v = obj.programs["read_globals"], obj.variables
        for run in range(4):
            counter = 7 + run
            assert prog.test_run().retval == counter * 1000 + 42
            assert v["data_counter"].get() == counter + 1
            assert v["bss_result"].get() == counter * 1000 + 42
            assert v["bss_seen_param"].get() == 42


def test_set_data_and_bss_after_load_is_seen_by_the_program(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        prog, v = obj.programs["read_globals"], obj.variables
        v["data_counter"].set(123)
        assert prog.test_run().retval == 123 * 1000 + 42
        assert v["data_counter"].get() == 124
        v["bss_result"].set(2**64 - 1)
        assert v["bss_result"].get() == 2**64 - 1
        prog.test_run()
        assert v["bss_result"].get() == 124 * 1000 + 42
        v["data_struct"].set(bytes(range(16)))
        assert v["data_struct"].get() == bytes(range(16))


def test_rodata_set_before_load_changes_what_the_program_sees(no_fd_leak):
    spec = pybpf.open(program("globals_test"))
    spec.variables["rodata_param"].set(5)
    spec.variables["data_counter"].set(3)
    with spec.load() as obj:
        assert obj.variables["rodata_param"].get() == 5
        assert obj.programs["read_globals"].test_run().retval == 3 * 1000 + 5
        assert obj.variables["bss_seen_param"].get() == 5


def test_rodata_set_after_load_raises(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        with pytest.raises(pybpf.Error, match="read-only"):
            obj.variables["rodata_param"].set(1)
        assert obj.variables["rodata_param"].get() == 42
        assert obj.programs["read_globals"].test_run().retval == 7 * 1000 + 42


def test_rodata_map_is_frozen_for_user_space(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        rodata = obj.maps["globals_.rodata"]
        assert bytes(rodata.lookup(0))[:4] == struct.pack("<I", 42)
        with pytest.raises(pybpf.SyscallError) as exc:
            rodata.update(0, bytes(rodata.value_size))
        assert exc.value.command == "BPF_MAP_UPDATE_ELEM"
        assert obj.variables["rodata_param"].get() == 42


def test_internal_map_value_is_the_section_image(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        data = obj.maps["globals_.data"]
        assert data.lookup(0) == bytes(obj.spec.maps["globals_.data"].data)
        obj.variables["data_counter"].set(0x0A0B0C0D)
        off = obj.variables["data_counter"].offset
        assert bytes(data.lookup(0))[off:off + 4] == struct.pack("<I", 0x0A0B0C0D)   # mmap and map agree


def test_variable_set_wrong_size_after_load(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        with pytest.raises(pybpf.Error):
            obj.variables["data_struct"].set(b"short")
        with pytest.raises(pybpf.Error):
            obj.variables["data_counter"].set(2**40)
        assert obj.variables["data_counter"].get() == 7


def test_static_globals_relocated_through_section_symbols(no_fd_leak):
    spec = pybpf.open(program("link_test"))
    spec.variables["bias"].set(7)
    with spec.load() as obj:
        prog = obj.programs["link_main"]
        for run, (a, b) in enumerate([(3, 4), (10, 0), (1000, 2000)], start=1):
            r = prog.test_run(ctx=struct.pack("<IIQ", a, b, 0))
            expected = (a * a + b * b + 7 * 7) & 0xFFFFFFFF
            assert struct.unpack("<IIQ", r.ctx)[2] == expected
            assert obj.variables["last_out"].get() == expected
            assert r.retval == 100 + run == obj.variables["runs"].get()


# -- subprograms and callbacks ----------------------------------------------------------------

def compute_args(n: int, x: int) -> bytes:
    return struct.pack("<IIQQ", n, x, 0, 0)


@pytest.mark.parametrize("n, x", [(0, 0), (10, 7), (1000, -2), (1, 2**30)])
def test_compute_calls_loops_and_callbacks(n, x, no_fd_leak):
    with pybpf.load(program("calls_test")) as obj:
        values = [11, 22, 0, 2**40]
        for i, v in enumerate(values):
            obj.maps["arr"].update(i, v)
        r = obj.programs["compute"].test_run(ctx=compute_args(n, x & 0xFFFFFFFF))
        out_n, out_x, out_loop, out_each = struct.unpack("<IIQQ", r.ctx)
        assert (out_n, out_x) == (n, x & 0xFFFFFFFF)
        assert out_loop == sum(range(n))                     # bpf_loop callback
        assert out_each == sum(values)                       # for_each_map_elem callback
        expected = ((2 * x + 3 + 2**31) % 2**32) - 2**31      # add3(twice(x)) in 32-bit int
        assert r.retval == expected
        assert obj.programs["compute2"].test_run().retval == 4


def test_compute_sees_map_updates_between_runs(no_fd_leak):
    with pybpf.load(program("calls_test")) as obj:
        run = obj.programs["compute"]
        assert struct.unpack("<IIQQ", run.test_run(ctx=compute_args(3, 1)).ctx)[3] == 0
        obj.maps["arr"].update(3, 5)
        assert struct.unpack("<IIQQ", run.test_run(ctx=compute_args(3, 1)).ctx)[3] == 5
        obj.maps["arr"].update(0, 100)
        assert struct.unpack("<IIQQ", run.test_run(ctx=compute_args(3, 1)).ctx)[3] == 105


def test_test_run_result_fields(no_fd_leak):
    with pybpf.load(program("calls_test")) as obj:
        r = obj.programs["compute"].test_run(ctx=compute_args(4, 1))
        assert isinstance(r, pybpf.TestRunResult)
        assert r.retval == 5 and r.data == b"" and len(r.ctx) == 24


def test_syscall_program_refuses_data(no_fd_leak):
    with pybpf.load(program("calls_test")) as obj:
        with pytest.raises(pybpf.Error):
            obj.programs["compute2"].test_run(data=b"x" * 20)


def test_program_reports_linked_instruction_count(no_fd_leak):
    spec = pybpf.open(program("calls_test"))
    with spec.load() as obj:
        p = obj.programs["compute"]
        expected = spec.programs["compute"].function.insn_cnt + sum(
            fn.insn_cnt for fn in spec.functions.values())
        assert p.insn_cnt == expected
        assert p.type.name == "SYSCALL"


# -- closed objects ------------------------------------------------------------------------------

def test_program_after_object_closed(no_fd_leak):
    obj = pybpf.load(program("calls_test"))
    prog = obj.programs["compute2"]
    obj.close()
    with pytest.raises(pybpf.ClosedError, match="compute2"):
        prog.test_run()
    with pytest.raises(pybpf.ClosedError):
        obj.attach()


def test_closed_program(no_fd_leak):
    with pybpf.load(program("calls_test")) as obj:
        prog = obj.programs["compute2"]
        prog.close()
        assert prog.closed
        with pytest.raises(pybpf.ClosedError):
            prog.test_run()
        # the other program still works
        assert obj.programs["compute"].test_run(ctx=compute_args(0, 0)).retval == 3


def test_variables_after_object_closed(no_fd_leak):
    obj = pybpf.load(program("globals_test"))
    var = obj.variables["data_counter"]
    assert var.get() == 7
    obj.close()
    with pytest.raises(pybpf.ClosedError):
        var.get()
    with pytest.raises(pybpf.ClosedError):
        var.set(1)


def test_object_linked_by_bpftool_loads_and_runs(tmp_path, no_fd_leak):
    import shutil
    import subprocess
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.skip("bpftool not installed")
    out = tmp_path / "calls_test.o"
    subprocess.run([bpftool, "gen", "object", str(out), program("calls_test")], check=True, capture_output=True)
    with pybpf.load(out) as obj:
        obj.maps["arr"].update(1, 9)
        r = obj.programs["compute"].test_run(ctx=compute_args(5, 20))
        assert r.retval == 43 and struct.unpack("<IIQQ", r.ctx)[2:] == (0 + 1 + 2 + 3 + 4, 9)
