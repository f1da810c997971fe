/* SPDX-License-Identifier: GPL-2.0 */
/* Records exchanged by user_ringbuf.bpf.c (the eunomia user-ringbuf tutorial).
 * Include after vmlinux.h: vmlinux.h declares TASK_COMM_LEN as an enum constant.
 */
#ifndef PYBPF_USER_RINGBUF_H
#define PYBPF_USER_RINGBUF_H

#ifndef TASK_COMM_LEN
#define TASK_COMM_LEN 16
#endif

/* user space -> kernel, through the USER_RINGBUF map `user_ringbuf` (20 bytes) */
struct user_sample {
	int i;
	char comm[TASK_COMM_LEN];
};

/* kernel -> user space, through the RINGBUF map `kernel_ringbuf` (20 bytes) */
struct event {
	int pid;
	char comm[TASK_COMM_LEN];
};

#endif /* PYBPF_USER_RINGBUF_H */
