"""Link.info(): what the kernel says about a link, checked against bpftool's own view
(``bpftool -j link show id N``) and against the program and target it was made for."""

from __future__ import annotations

import os

import pytest

import pybpf
from pybpf.kernel.constants import AttachType, LinkType
from pybpf.links import cgroup2_mount

from conftest import bpftool_link, prog_id, program

pytestmark = pytest.mark.kernel


def test_raw_tracepoint_link_info_matches_bpftool(no_fd_leak):
    with pybpf.load(program("tracepoint_test")) as obj:
        prog = next(p for p in obj.programs.values() if p.spec.sec_def.attach == "raw_tracepoint")
        link = prog.attach()
        info = link.info()
        assert info.type == LinkType.RAW_TRACEPOINT and info.prog_id == prog_id(prog)
        assert info.tp_name == prog.spec.attach_target
        tool = bpftool_link(info.id)
        assert (tool["id"], tool["type"], tool["prog_id"], tool["tp_name"]) == \
            (info.id, "raw_tracepoint", info.prog_id, info.tp_name)
        link.close()
        with pytest.raises(pybpf.ClosedError):
            link.info()


def test_cgroup_link_info_names_the_cgroup_and_attach_type(no_fd_leak, not_supported_skip):
    with not_supported_skip:
        root = cgroup2_mount()
    cg = os.path.join(root, f"pybpf-linkinfo-{os.getpid()}")
    os.mkdir(cg)
    try:
        with pybpf.load(program("map_types")) as obj:
            prog = obj.programs["count_egress"]
            with prog.attach_cgroup(cg) as link:
                info = link.info()
                assert info.type == LinkType.CGROUP and info.attach_type == AttachType.CGROUP_INET_EGRESS
                assert info.cgroup_id == os.stat(cg).st_ino          # a cgroup v2 id is its inode number
                tool = bpftool_link(info.id)
                assert (tool["type"], tool["prog_id"], tool["cgroup_id"], tool["attach_type"]) == \
                    ("cgroup", prog_id(prog), info.cgroup_id, "cgroup_inet_egress")
    finally:
        os.rmdir(cg)
