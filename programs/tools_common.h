/* SPDX-License-Identifier: GPL-2.0 */
/* Shared by the programs/tools_*.bpf.c stand-ins for bcc's libbpf-tools: the
 * log2 histogram slot of a value, as their bits.bpf.h computes it. */
#ifndef TOOLS_COMMON_H
#define TOOLS_COMMON_H

#define MAX_SLOTS 27

struct hist {
	__u32 slots[MAX_SLOTS];
};

static __always_inline __u64 tools_log2(__u32 v)
{
	__u32 shift, r;

	r = (v > 0xFFFF) << 4; v >>= r;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u64 tools_log2l(__u64 v)
{
	__u32 hi = v >> 32;

	if (hi)
		return tools_log2(hi) + 32;
	return tools_log2(v);
}

static __always_inline void hist_add(struct hist *h, __u64 delta)
{
	__u64 slot = tools_log2l(delta);

	if (slot >= MAX_SLOTS)
		slot = MAX_SLOTS - 1;
	__sync_fetch_and_add(&h->slots[slot], 1);
}

#endif
