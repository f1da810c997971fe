// SPDX-License-Identifier: GPL-2.0
/* A command channel from user space into a kernel map (the way bpftime pushes
 * map updates through a user ring buffer): user space writes `struct command`
 * samples into the USER_RINGBUF `commands`; the SEC("syscall") program `apply`,
 * run with BPF_PROG_TEST_RUN, drains them with bpf_user_ringbuf_drain and
 * applies each one to the hash map `table` (key: a name of up to 15 chars,
 * value: a u64). examples/ring_commands.py drives it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define KEY_LEN 16

enum command_op {
	CMD_SET = 1,		/* table[key] = value */
	CMD_DELETE = 2,		/* delete table[key] */
	CMD_BUMP = 3,		/* table[key] += value (created as value if missing) */
};

struct command {		/* 32 bytes */
	enum command_op op;
	__u32 pad;
	char key[KEY_LEN];
	__u64 value;
};

struct {
	__uint(type, BPF_MAP_TYPE_USER_RINGBUF);
	__uint(max_entries, 256 * 1024);
} commands SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct command")));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, char[KEY_LEN]);
	__type(value, __u64);
} table SEC(".maps");

/* .bss: what the drains did, over all runs */
__u64 applied;			/* commands applied */
__u64 failed;			/* map update/delete refused (full map, missing key) */
__u64 malformed;		/* samples too short or with an unknown op */

/* keeps struct command in the object's BTF (it only appears as a local) */
struct command *unused_command __attribute__((unused));

static long apply_one(struct bpf_dynptr *dynptr, void *ctx)
{
	struct command c;
	__u64 *cur;

	if (bpf_dynptr_read(&c, sizeof(c), dynptr, 0, 0)) {
		malformed++;
		return 0;
	}
	switch (c.op) {
	case CMD_SET:
		if (bpf_map_update_elem(&table, c.key, &c.value, BPF_ANY))
			failed++;
		break;
	case CMD_DELETE:
		if (bpf_map_delete_elem(&table, c.key))
			failed++;
		break;
	case CMD_BUMP:
		cur = bpf_map_lookup_elem(&table, c.key);
		if (cur)
			__sync_fetch_and_add(cur, c.value);
		else if (bpf_map_update_elem(&table, c.key, &c.value, BPF_NOEXIST))
			failed++;
		break;
	default:
		malformed++;
		return 0;
	}
	applied++;
	return 0;
}

/* Returns how many samples this run drained (bpf_user_ringbuf_drain's result). */
SEC("syscall")
int apply(void *ctx)
{
	return bpf_user_ringbuf_drain(&commands, apply_one, NULL, 0);
}
