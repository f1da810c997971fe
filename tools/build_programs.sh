#!/usr/bin/env bash
# Build the BPF test programs under programs/ into committed, reproducible objects.
#
#   tools/build_programs.sh [--out DIR] [--no-vmlinux]
#
#   --out DIR      write <name>.o into DIR instead of programs/ (tests build into a temp dir)
#   --no-vmlinux   keep programs/vmlinux.h as committed instead of regenerating it from
#                  /sys/kernel/btf/vmlinux (it must stay stable across kernels)
#
# Each programs/<name>.bpf.c becomes <name>.o, compiled the way libbpf-bootstrap does
# (clang -g -O2 -target bpf, then llvm-strip -g: DWARF goes, .BTF/.BTF.ext stay).
# Objects are byte-for-byte reproducible with the same clang-19: clang runs inside
# programs/ on relative file names (BTF line_info stores file names) and the debug
# prefix maps hide the working directory.
set -euo pipefail

CLANG=${CLANG:-clang-19}
LLVM_STRIP=${LLVM_STRIP:-llvm-strip-19}
BPFTOOL=${BPFTOOL:-bpftool}
INSTALL_HINT="apt-get install clang-19 llvm-19 libbpf-dev bpftool"

usage() { sed -n '2,8s/^# \{0,1\}//p' "$0" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
progdir="$root/programs"
out=""
vmlinux=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        --no-vmlinux) vmlinux=0; shift ;;
        -h|--help) usage ;;
        *) echo "build_programs.sh: unknown argument: $1" >&2; usage ;;
    esac
done

die() { echo "build_programs.sh: $*" >&2; exit 1; }

command -v "$CLANG" >/dev/null 2>&1 || die "$CLANG not found (install with: $INSTALL_HINT)"
command -v "$LLVM_STRIP" >/dev/null 2>&1 || die "$LLVM_STRIP not found (install with: $INSTALL_HINT)"
[ -f /usr/include/bpf/bpf_helpers.h ] || die "/usr/include/bpf/bpf_helpers.h not found (install with: $INSTALL_HINT)"

if [ -z "$out" ]; then
    out=$progdir
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ "$vmlinux" = 1 ]; then
    command -v "$BPFTOOL" >/dev/null 2>&1 || die "$BPFTOOL not found (install with: $INSTALL_HINT), or pass --no-vmlinux"
    [ -r /sys/kernel/btf/vmlinux ] || die "/sys/kernel/btf/vmlinux not readable (kernel without BTF?), pass --no-vmlinux"
    tmp=$(mktemp "$progdir/.vmlinux.h.XXXXXX")
    "$BPFTOOL" btf dump file /sys/kernel/btf/vmlinux format c >"$tmp" || { rm -f "$tmp"; die "bpftool btf dump failed"; }
    chmod 644 "$tmp"
    mv "$tmp" "$progdir/vmlinux.h"
    echo "  GEN     programs/vmlinux.h"
fi
[ -f "$progdir/vmlinux.h" ] || die "programs/vmlinux.h missing: run without --no-vmlinux on a kernel with BTF"

cd "$progdir"
shopt -s nullglob
sources=(*.bpf.c)
[ ${#sources[@]} -gt 0 ] || die "no programs/*.bpf.c to build"

for src in "${sources[@]}"; do
    name=${src%.bpf.c}
    tmp="$out/.$name.o.tmp"
    # Relative source name + prefix maps: no absolute path of this checkout in the object.
    "$CLANG" -g -O2 -target bpf -D__TARGET_ARCH_x86 -I . \
        -fdebug-compilation-dir=. -fdebug-prefix-map="$progdir"=. \
        -Wall \
        -c "$src" -o "$tmp"
    "$LLVM_STRIP" -g "$tmp"
    mv "$tmp" "$out/$name.o"
    echo "  BPF     $name.o"
done
