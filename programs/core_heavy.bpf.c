// SPDX-License-Identifier: GPL-2.0
/* CO-RE-heavy: one raw tracepoint reads ~60 facts about the current process
 * through ~150 relocations spread over a dozen kernel structures (task_struct,
 * mm_struct with its anonymous wrapper struct, signal_struct with the rlim[]
 * array, cred, nsproxy -> uts_namespace -> new_utsname char arrays, fs_struct,
 * files_struct -> fdtable, file -> path -> dentry -> qstr in an anonymous
 * union, sched_entity), plus bitfields, enum values and type facts.  Tests
 * compare the results with /proc; the object is also the CO-RE load benchmark.
 * (No bpf_core_type_size(struct file/dentry): with them clang 19 orders the
 * forward declarations it emits differently depending on the build directory.)
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

#define RLIMIT_STACK	3	/* asm-generic/resource.h: macros, not in BTF */
#define RLIMIT_NOFILE	7

struct facts {
	__u32 runs;
	__s32 pid, tgid, ppid, leader_pid, parent_leader_pid;
	__s32 prio, static_prio, normal_prio;
	__u32 rt_priority, policy, flags, nr_cpus_allowed;
	__s32 exit_signal, pdeath_signal;
	__u64 start_time, start_boottime, utime, stime, nvcsw, nivcsw, min_flt, maj_flt;
	__u64 vruntime, sum_exec_runtime;
	char comm[16];
	/* mm_struct (members inside an anonymous struct) */
	__u64 total_vm, start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
	__u64 arg_start, arg_end, env_start, env_end;
	__s32 map_count;
	char exe[32];
	__u32 exe_len;
	/* signal_struct */
	__s32 nr_threads;
	__u64 nofile_cur, nofile_max, stack_cur;
	__u32 child_subreaper;
	/* cred */
	__u32 uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
	__u64 cap_effective;
	/* namespaces, fs, files */
	char nodename[65];
	char sysname[65];
	__s32 umask;
	__u32 max_fds;
	char root_name[8];
	/* bitfields */
	__u64 reset_on_fork, in_execve, in_iowait, has_child_subreaper;
	/* enums and types */
	__u64 tgid_type, prog_type_tracing, comm_len, map_type_ringbuf;
	__u64 size_task, size_mm, size_cred, size_signal, size_utsname;
	__u32 exists_mm, exists_nsproxy, field_exists_rlim, field_exists_arg_start;
};

struct facts facts;

static __noinline int read_mm(struct task_struct *t)
{
	struct mm_struct *mm = BPF_CORE_READ(t, mm);
	const unsigned char *name;

	if (!mm)
		return 0;
	facts.total_vm = BPF_CORE_READ(mm, total_vm);
	facts.start_code = BPF_CORE_READ(mm, start_code);
	facts.end_code = BPF_CORE_READ(mm, end_code);
	facts.start_data = BPF_CORE_READ(mm, start_data);
	facts.end_data = BPF_CORE_READ(mm, end_data);
	facts.start_brk = BPF_CORE_READ(mm, start_brk);
	facts.brk = BPF_CORE_READ(mm, brk);
	facts.start_stack = BPF_CORE_READ(mm, start_stack);
	facts.arg_start = BPF_CORE_READ(mm, arg_start);
	facts.arg_end = BPF_CORE_READ(mm, arg_end);
	facts.env_start = BPF_CORE_READ(mm, env_start);
	facts.env_end = BPF_CORE_READ(mm, env_end);
	facts.map_count = BPF_CORE_READ(mm, map_count);
	name = BPF_CORE_READ(mm, exe_file, f_path.dentry, d_name.name);
	facts.exe_len = BPF_CORE_READ(mm, exe_file, f_path.dentry, d_name.len);
	bpf_probe_read_kernel_str(facts.exe, sizeof(facts.exe), name);
	return 0;
}

static __noinline int read_signal_cred(struct task_struct *t)
{
	struct signal_struct *sig = BPF_CORE_READ(t, signal);
	const struct cred *cred = BPF_CORE_READ(t, cred);

	facts.nr_threads = BPF_CORE_READ(sig, nr_threads);
	facts.nofile_cur = BPF_CORE_READ(sig, rlim[RLIMIT_NOFILE].rlim_cur);
	facts.nofile_max = BPF_CORE_READ(sig, rlim[RLIMIT_NOFILE].rlim_max);
	facts.stack_cur = BPF_CORE_READ(sig, rlim[RLIMIT_STACK].rlim_cur);
	facts.child_subreaper = BPF_CORE_READ_BITFIELD_PROBED(sig, is_child_subreaper);
	facts.has_child_subreaper = BPF_CORE_READ_BITFIELD_PROBED(sig, has_child_subreaper);

	facts.uid = BPF_CORE_READ(cred, uid.val);
	facts.gid = BPF_CORE_READ(cred, gid.val);
	facts.euid = BPF_CORE_READ(cred, euid.val);
	facts.egid = BPF_CORE_READ(cred, egid.val);
	facts.suid = BPF_CORE_READ(cred, suid.val);
	facts.sgid = BPF_CORE_READ(cred, sgid.val);
	facts.fsuid = BPF_CORE_READ(cred, fsuid.val);
	facts.fsgid = BPF_CORE_READ(cred, fsgid.val);
	facts.cap_effective = BPF_CORE_READ(cred, cap_effective.val);
	return 0;
}

static __noinline int read_ns_fs_files(struct task_struct *t)
{
	struct uts_namespace *uts = BPF_CORE_READ(t, nsproxy, uts_ns);
	const unsigned char *root;

	BPF_CORE_READ_STR_INTO(&facts.nodename, uts, name.nodename);
	BPF_CORE_READ_STR_INTO(&facts.sysname, uts, name.sysname);
	facts.umask = BPF_CORE_READ(t, fs, umask);
	facts.max_fds = BPF_CORE_READ(t, files, fdt, max_fds);
	root = BPF_CORE_READ(t, fs, root.dentry, d_name.name);
	bpf_probe_read_kernel_str(facts.root_name, sizeof(facts.root_name), root);
	return 0;
}

SEC("raw_tp/sys_enter")
int heavy(void *ctx)
{
	struct task_struct *t = (void *)bpf_get_current_task();

	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	if (facts.runs++)
		return 0;

	facts.pid = BPF_CORE_READ(t, pid);
	facts.tgid = BPF_CORE_READ(t, tgid);
	facts.ppid = BPF_CORE_READ(t, real_parent, tgid);
	facts.leader_pid = BPF_CORE_READ(t, group_leader, pid);
	facts.parent_leader_pid = BPF_CORE_READ(t, real_parent, group_leader, pid);
	facts.prio = BPF_CORE_READ(t, prio);
	facts.static_prio = BPF_CORE_READ(t, static_prio);
	facts.normal_prio = BPF_CORE_READ(t, normal_prio);
	facts.rt_priority = BPF_CORE_READ(t, rt_priority);
	facts.policy = BPF_CORE_READ(t, policy);
	facts.flags = BPF_CORE_READ(t, flags);
	facts.nr_cpus_allowed = BPF_CORE_READ(t, nr_cpus_allowed);
	facts.exit_signal = BPF_CORE_READ(t, exit_signal);
	facts.pdeath_signal = BPF_CORE_READ(t, pdeath_signal);
	facts.start_time = BPF_CORE_READ(t, start_time);
	facts.start_boottime = BPF_CORE_READ(t, start_boottime);
	facts.utime = BPF_CORE_READ(t, utime);
	facts.stime = BPF_CORE_READ(t, stime);
	facts.nvcsw = BPF_CORE_READ(t, nvcsw);
	facts.nivcsw = BPF_CORE_READ(t, nivcsw);
	facts.min_flt = BPF_CORE_READ(t, min_flt);
	facts.maj_flt = BPF_CORE_READ(t, maj_flt);
	facts.vruntime = BPF_CORE_READ(t, se.vruntime);
	facts.sum_exec_runtime = BPF_CORE_READ(t, se.sum_exec_runtime);
	BPF_CORE_READ_STR_INTO(&facts.comm, t, comm);

	facts.reset_on_fork = BPF_CORE_READ_BITFIELD_PROBED(t, sched_reset_on_fork);
	facts.in_execve = BPF_CORE_READ_BITFIELD_PROBED(t, in_execve);
	facts.in_iowait = BPF_CORE_READ_BITFIELD_PROBED(t, in_iowait);

	read_mm(t);
	read_signal_cred(t);
	read_ns_fs_files(t);

	facts.tgid_type = bpf_core_enum_value(enum pid_type, PIDTYPE_TGID);
	facts.prog_type_tracing = bpf_core_enum_value(enum bpf_prog_type, BPF_PROG_TYPE_TRACING);
	facts.map_type_ringbuf = bpf_core_enum_value(enum bpf_map_type, BPF_MAP_TYPE_RINGBUF);
	facts.comm_len = bpf_core_field_size(t->comm);
	facts.size_task = bpf_core_type_size(struct task_struct);
	facts.size_mm = bpf_core_type_size(struct mm_struct);
	facts.size_cred = bpf_core_type_size(struct cred);
	facts.size_signal = bpf_core_type_size(struct signal_struct);
	facts.size_utsname = bpf_core_type_size(struct new_utsname);
	facts.exists_mm = bpf_core_type_exists(struct mm_struct);
	facts.exists_nsproxy = bpf_core_type_exists(struct nsproxy);
	facts.field_exists_rlim = bpf_core_field_exists(t->signal->rlim);
	facts.field_exists_arg_start = bpf_core_field_exists(t->mm->arg_start);
	return 0;
}
