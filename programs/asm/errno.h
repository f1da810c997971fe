/* For BPF programs including <linux/errno.h> (libbpf's usdt.bpf.h does): clang -target bpf
 * does not search the multiarch /usr/include/x86_64-linux-gnu where Debian keeps <asm/...>;
 * the errno values are the generic ones on every architecture pybpf builds for. */
#include <asm-generic/errno.h>
