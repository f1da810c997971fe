#!/usr/bin/env bash
# Install the system packages the tests need (Debian): clang-19/llvm-19 and libbpf's
# headers rebuild programs/ for the reproducibility test; bpftool is the reference the
# tests compare against; iproute2 (ip, tc) makes and checks their network namespaces;
# chromium renders the layout SVG that tests/test_display.py reads back pixel by pixel.
# None of them is used by pybpf at run time. Needs root.
set -euo pipefail
need=()
command -v clang-19 >/dev/null 2>&1 || need+=(clang-19)
command -v llvm-strip-19 >/dev/null 2>&1 || need+=(llvm-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null 2>&1 || [ -x /usr/sbin/bpftool ] || need+=(bpftool)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# ip and tc: the network tests' namespaces, veth pairs and qdisc checks
command -v tc >/dev/null 2>&1 || [ -x /usr/sbin/tc ] || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# bpffs for the pinning tests (harmless if already mounted)
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null || echo "install-test-deps: could not mount bpffs at /sys/fs/bpf" >&2
fi
