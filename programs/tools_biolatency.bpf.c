// SPDX-License-Identifier: GPL-2.0
/* A biolatency-style tool (a stand-in for bcc's libbpf-tools/biolatency): the
 * time from a block request's insert (or issue, with targ_queued false) to its
 * completion, as a log2 histogram in microseconds per disk and operation.
 * tp_btf programs on the block tracepoints with raw_tp twins (biolatency picks
 * one set by kernel), CO-RE reads of request -> request_queue -> gendisk, a hash
 * of start times keyed by the request pointer, a hash of histograms and per-CPU
 * counters.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "tools_common.h"

char LICENSE[] SEC("license") = "GPL";

#define MINORBITS 20
#define MKDEV(ma, mi) ((__u32)(((ma) << MINORBITS) | (mi)))
#define REQ_OP_MASK 0xff

const volatile bool targ_queued = true;	/* from insert (true) or from issue */
const volatile __u32 targ_dev = 0;	/* kernel dev_t (major << 20 | minor); 0: every disk */

struct hist_key {
	__u32 dev;
	__u32 op;		/* REQ_OP_READ 0, REQ_OP_WRITE 1, ... */
};

enum counter { ISSUED, COMPLETED, MISSED, RAW_ISSUED, NR_COUNTERS };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct request *);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct hist_key);
	__type(value, struct hist);
} hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static struct hist zero_hist;

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += 1;
}

static __always_inline __u32 rq_dev(struct request *rq)
{
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);

	if (!disk)
		return 0;
	return MKDEV(BPF_CORE_READ(disk, major), BPF_CORE_READ(disk, first_minor));
}

static __always_inline int trace_start(struct request *rq, bool insert)
{
	__u64 ts;

	if (insert != targ_queued)
		return 0;
	if (targ_dev && rq_dev(rq) != targ_dev)
		return 0;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &rq, &ts, BPF_ANY);
	count(ISSUED);
	return 0;
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(block_rq_insert, struct request *rq)
{
	return trace_start(rq, true);
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	return trace_start(rq, false);
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	struct hist_key key = {};
	struct hist *h;
	__u64 *tsp, delta;

	tsp = bpf_map_lookup_elem(&start, &rq);
	if (!tsp) {
		count(MISSED);
		return 0;
	}
	delta = (bpf_ktime_get_ns() - *tsp) / 1000;
	key.dev = rq_dev(rq);
	key.op = BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK;
	h = bpf_map_lookup_elem(&hists, &key);
	if (!h) {
		bpf_map_update_elem(&hists, &key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &key);
		if (!h)
			goto out;
	}
	hist_add(h, delta);
	count(COMPLETED);
out:
	bpf_map_delete_elem(&start, &rq);
	return 0;
}

/* the raw tracepoint twin (biolatency uses these where tp_btf is missing):
 * only counts, so both sets can be attached at once */
SEC("raw_tp/block_rq_issue")
int BPF_PROG(block_rq_issue_raw, struct request *rq)
{
	if (targ_dev && rq_dev(rq) != targ_dev)
		return 0;
	count(RAW_ISSUED);
	return 0;
}
