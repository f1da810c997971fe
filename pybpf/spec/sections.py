"""Program section names → program type, expected attach type and attach kind.

This follows libbpf's section table (src/libbpf.c ``section_defs``) and its
matching rules, so objects written for libbpf load the same way:

- ``name+``: the exact name, or ``name/<target>``;
- ``name/``: any name with that prefix;
- otherwise: the exact name.

The first entry that matches wins.  A leading ``?`` on a section name means
"do not load automatically" and is not part of the match.
"""

from __future__ import annotations

from collections import namedtuple

# flags
ATTACHABLE = 1        # expected_attach_type is required at load time
ATTACHABLE_OPT = 2    # expected_attach_type is passed if the kernel knows it
ATTACH_BTF = 4        # attach_btf_id is resolved from kernel BTF at load time
SLEEPABLE = 8         # BPF_F_SLEEPABLE
XDP_FRAGS = 16        # BPF_F_XDP_HAS_FRAGS
USDT = 32


class SectionDef(namedtuple("SectionDef", "sec prog_type attach_type flags attach", defaults=(0, None))):
    """One row of the section table (immutable).

    ``prog_type`` and ``attach_type`` are names of :class:`pybpf.kernel.constants.ProgType`
    and ``AttachType`` members (``None`` for no expected attach type);
    ``attach`` names how ``Program.attach()`` attaches it automatically (``None``
    when the program needs a target the section does not say, e.g. xdp).
    """

    __slots__ = ()

    def matches(self, name: str) -> bool:
        sec = self.sec
        if sec.endswith("/"):
            return name.startswith(sec)
        if sec.endswith("+"):
            stem = sec[:-1]
            return name == stem or name.startswith(stem + "/")
        return name == sec

    @property
    def stem(self) -> str:
        """The section prefix without its matching marker (``tracepoint`` for ``tracepoint+``)."""
        return self.sec.rstrip("+/")


def _d(sec, prog_type, attach_type=None, flags=0, attach=None):
    return SectionDef(sec, prog_type, attach_type, flags, attach)


SECTION_DEFS: tuple[SectionDef, ...] = (
    _d("socket", "SOCKET_FILTER"),
    _d("sk_reuseport/migrate", "SK_REUSEPORT", "SK_REUSEPORT_SELECT_OR_MIGRATE", ATTACHABLE),
    _d("sk_reuseport", "SK_REUSEPORT", "SK_REUSEPORT_SELECT", ATTACHABLE),
    _d("kprobe+", "KPROBE", None, 0, "kprobe"),
    _d("uprobe+", "KPROBE", None, 0, "uprobe"),
    _d("uprobe.s+", "KPROBE", None, SLEEPABLE, "uprobe"),
    _d("kretprobe+", "KPROBE", None, 0, "kretprobe"),
    _d("uretprobe+", "KPROBE", None, 0, "uretprobe"),
    _d("uretprobe.s+", "KPROBE", None, SLEEPABLE, "uretprobe"),
    _d("kprobe.multi+", "KPROBE", "TRACE_KPROBE_MULTI", 0, "kprobe_multi"),
    _d("kretprobe.multi+", "KPROBE", "TRACE_KPROBE_MULTI", 0, "kprobe_multi"),
    _d("kprobe.session+", "KPROBE", "TRACE_KPROBE_SESSION", 0, "kprobe_multi"),
    _d("uprobe.multi+", "KPROBE", "TRACE_UPROBE_MULTI", 0, "uprobe_multi"),
    _d("uretprobe.multi+", "KPROBE", "TRACE_UPROBE_MULTI", 0, "uprobe_multi"),
    _d("uprobe.session+", "KPROBE", "TRACE_UPROBE_SESSION", 0, "uprobe_multi"),
    _d("uprobe.multi.s+", "KPROBE", "TRACE_UPROBE_MULTI", SLEEPABLE, "uprobe_multi"),
    _d("uretprobe.multi.s+", "KPROBE", "TRACE_UPROBE_MULTI", SLEEPABLE, "uprobe_multi"),
    _d("uprobe.session.s+", "KPROBE", "TRACE_UPROBE_SESSION", SLEEPABLE, "uprobe_multi"),
    _d("ksyscall+", "KPROBE", None, 0, "ksyscall"),
    _d("kretsyscall+", "KPROBE", None, 0, "ksyscall"),
    _d("usdt+", "KPROBE", None, USDT, "usdt"),
    _d("usdt.s+", "KPROBE", None, USDT | SLEEPABLE, "usdt"),
    _d("tc/ingress", "SCHED_CLS", "TCX_INGRESS"),
    _d("tc/egress", "SCHED_CLS", "TCX_EGRESS"),
    _d("tcx/ingress", "SCHED_CLS", "TCX_INGRESS"),
    _d("tcx/egress", "SCHED_CLS", "TCX_EGRESS"),
    _d("netkit/primary", "SCHED_CLS", "NETKIT_PRIMARY"),
    _d("netkit/peer", "SCHED_CLS", "NETKIT_PEER"),
    _d("tc", "SCHED_CLS"),
    _d("classifier", "SCHED_CLS"),
    _d("action", "SCHED_ACT"),
    _d("tracepoint+", "TRACEPOINT", None, 0, "tracepoint"),
    _d("tp+", "TRACEPOINT", None, 0, "tracepoint"),
    _d("raw_tracepoint+", "RAW_TRACEPOINT", None, 0, "raw_tracepoint"),
    _d("raw_tp+", "RAW_TRACEPOINT", None, 0, "raw_tracepoint"),
    _d("raw_tracepoint.w+", "RAW_TRACEPOINT_WRITABLE", None, 0, "raw_tracepoint"),
    _d("raw_tp.w+", "RAW_TRACEPOINT_WRITABLE", None, 0, "raw_tracepoint"),
    _d("tp_btf+", "TRACING", "TRACE_RAW_TP", ATTACH_BTF, "trace"),
    _d("fentry+", "TRACING", "TRACE_FENTRY", ATTACH_BTF, "trace"),
    _d("fmod_ret+", "TRACING", "MODIFY_RETURN", ATTACH_BTF, "trace"),
    _d("fexit+", "TRACING", "TRACE_FEXIT", ATTACH_BTF, "trace"),
    _d("fentry.s+", "TRACING", "TRACE_FENTRY", ATTACH_BTF | SLEEPABLE, "trace"),
    _d("fmod_ret.s+", "TRACING", "MODIFY_RETURN", ATTACH_BTF | SLEEPABLE, "trace"),
    _d("fexit.s+", "TRACING", "TRACE_FEXIT", ATTACH_BTF | SLEEPABLE, "trace"),
    _d("fsession+", "TRACING", "TRACE_FSESSION", ATTACH_BTF, "trace"),
    _d("fsession.s+", "TRACING", "TRACE_FSESSION", ATTACH_BTF | SLEEPABLE, "trace"),
    _d("freplace+", "EXT", None, ATTACH_BTF, "trace"),
    _d("lsm+", "LSM", "LSM_MAC", ATTACH_BTF, "lsm"),
    _d("lsm.s+", "LSM", "LSM_MAC", ATTACH_BTF | SLEEPABLE, "lsm"),
    _d("lsm_cgroup+", "LSM", "LSM_CGROUP", ATTACH_BTF),
    _d("iter+", "TRACING", "TRACE_ITER", ATTACH_BTF, "iter"),
    _d("iter.s+", "TRACING", "TRACE_ITER", ATTACH_BTF | SLEEPABLE, "iter"),
    _d("syscall", "SYSCALL", None, SLEEPABLE),
    _d("xdp.frags/devmap", "XDP", "XDP_DEVMAP", XDP_FRAGS),
    _d("xdp/devmap", "XDP", "XDP_DEVMAP", ATTACHABLE),
    _d("xdp.frags/cpumap", "XDP", "XDP_CPUMAP", XDP_FRAGS),
    _d("xdp/cpumap", "XDP", "XDP_CPUMAP", ATTACHABLE),
    _d("xdp.frags", "XDP", "XDP", XDP_FRAGS),
    _d("xdp", "XDP", "XDP", ATTACHABLE_OPT),
    _d("perf_event", "PERF_EVENT"),
    _d("lwt_in", "LWT_IN"),
    _d("lwt_out", "LWT_OUT"),
    _d("lwt_xmit", "LWT_XMIT"),
    _d("lwt_seg6local", "LWT_SEG6LOCAL"),
    _d("sockops", "SOCK_OPS", "CGROUP_SOCK_OPS", ATTACHABLE_OPT),
    _d("sk_skb/stream_parser", "SK_SKB", "SK_SKB_STREAM_PARSER", ATTACHABLE_OPT),
    _d("sk_skb/stream_verdict", "SK_SKB", "SK_SKB_STREAM_VERDICT", ATTACHABLE_OPT),
    _d("sk_skb/verdict", "SK_SKB", "SK_SKB_VERDICT", ATTACHABLE_OPT),
    _d("sk_skb", "SK_SKB"),
    _d("sk_msg", "SK_MSG", "SK_MSG_VERDICT", ATTACHABLE_OPT),
    _d("lirc_mode2", "LIRC_MODE2", "LIRC_MODE2", ATTACHABLE_OPT),
    _d("flow_dissector", "FLOW_DISSECTOR", "FLOW_DISSECTOR", ATTACHABLE_OPT),
    # cgroup programs: the section gives the attach type, never the cgroup (attach
    # with Program.attach_cgroup(PATH) or Object.attach(cgroup=PATH)); checked against
    # libbpf's table row by row (tests/test_attach_cgroup.py)
    _d("cgroup_skb/ingress", "CGROUP_SKB", "CGROUP_INET_INGRESS", ATTACHABLE_OPT),
    _d("cgroup_skb/egress", "CGROUP_SKB", "CGROUP_INET_EGRESS", ATTACHABLE_OPT),
    _d("cgroup/skb", "CGROUP_SKB"),
    _d("cgroup/sock_create", "CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE", ATTACHABLE),
    _d("cgroup/sock_release", "CGROUP_SOCK", "CGROUP_INET_SOCK_RELEASE", ATTACHABLE),
    _d("cgroup/sock", "CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE", ATTACHABLE_OPT),
    _d("cgroup/post_bind4", "CGROUP_SOCK", "CGROUP_INET4_POST_BIND", ATTACHABLE),
    _d("cgroup/post_bind6", "CGROUP_SOCK", "CGROUP_INET6_POST_BIND", ATTACHABLE),
    _d("cgroup/bind4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_BIND", ATTACHABLE),
    _d("cgroup/bind6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_BIND", ATTACHABLE),
    _d("cgroup/connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT", ATTACHABLE),
    _d("cgroup/connect6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT", ATTACHABLE),
    _d("cgroup/connect_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_CONNECT", ATTACHABLE),
    _d("cgroup/sendmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_SENDMSG", ATTACHABLE),
    _d("cgroup/sendmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_SENDMSG", ATTACHABLE),
    _d("cgroup/sendmsg_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_SENDMSG", ATTACHABLE),
    _d("cgroup/recvmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_RECVMSG", ATTACHABLE),
    _d("cgroup/recvmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_RECVMSG", ATTACHABLE),
    _d("cgroup/recvmsg_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_RECVMSG", ATTACHABLE),
    _d("cgroup/getpeername4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETPEERNAME", ATTACHABLE),
    _d("cgroup/getpeername6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_GETPEERNAME", ATTACHABLE),
    _d("cgroup/getpeername_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_GETPEERNAME", ATTACHABLE),
    _d("cgroup/getsockname4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETSOCKNAME", ATTACHABLE),
    _d("cgroup/getsockname6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_GETSOCKNAME", ATTACHABLE),
    _d("cgroup/getsockname_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_GETSOCKNAME", ATTACHABLE),
    _d("cgroup/sysctl", "CGROUP_SYSCTL", "CGROUP_SYSCTL", ATTACHABLE),
    _d("cgroup/getsockopt", "CGROUP_SOCKOPT", "CGROUP_GETSOCKOPT", ATTACHABLE),
    _d("cgroup/setsockopt", "CGROUP_SOCKOPT", "CGROUP_SETSOCKOPT", ATTACHABLE),
    _d("cgroup/dev", "CGROUP_DEVICE", "CGROUP_DEVICE", ATTACHABLE_OPT),
    _d("struct_ops+", "STRUCT_OPS"),
    _d("struct_ops.s+", "STRUCT_OPS", None, SLEEPABLE),
    _d("sk_lookup", "SK_LOOKUP", "SK_LOOKUP", ATTACHABLE),
    _d("netfilter", "NETFILTER", "NETFILTER"),
)


# what the newer section kinds are, for messages when the running kernel lacks them
# (its BTF has no such BPF_<attach type> / BPF_PROG_TYPE_<type>)
FEATURES = {
    "fsession": "fsession (one tracing program run at both entry and exit of a kernel function, "
                "attach type BPF_TRACE_FSESSION)",
    "fsession.s": "sleepable fsession (attach type BPF_TRACE_FSESSION)",
    "kprobe.session": "kprobe sessions (one kprobe.multi program at entry and return, "
                      "attach type BPF_TRACE_KPROBE_SESSION)",
    "uprobe.session": "uprobe sessions (one uprobe.multi program at entry and return, "
                      "attach type BPF_TRACE_UPROBE_SESSION)",
    "uprobe.session.s": "sleepable uprobe sessions (attach type BPF_TRACE_UPROBE_SESSION)",
    "netkit/primary": "netkit devices (attach type BPF_NETKIT_PRIMARY)",
    "netkit/peer": "netkit devices (attach type BPF_NETKIT_PEER)",
    "netfilter": "netfilter hooks (program type BPF_PROG_TYPE_NETFILTER)",
}


def feature_name(sec_def: SectionDef) -> str:
    """What a section kind is, in words: ``"fsession (one tracing program ...)"``, or
    ``"SEC(\"tcx/ingress\") programs"`` for the kinds without a description."""
    return FEATURES.get(sec_def.stem) or f"SEC(\"{sec_def.stem}\") programs"


def match_section(name: str) -> SectionDef | None:
    """The section table row for a program section name (``?`` prefix ignored), or None."""
    if name.startswith("?"):
        name = name[1:]
    for d in SECTION_DEFS:
        if d.matches(name):
            return d
    return None


def attach_target(name: str, sec_def: SectionDef) -> str:
    """What follows ``<stem>/`` in a section name: the attach target (``syscalls/sys_exit_kill``)."""
    if name.startswith("?"):
        name = name[1:]
    stem = sec_def.stem
    if name.startswith(stem + "/"):
        return name[len(stem) + 1:]
    return ""
