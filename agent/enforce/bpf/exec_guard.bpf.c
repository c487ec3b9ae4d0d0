// SPDX-License-Identifier: GPL-2.0
/* Proscribe's kernel exec guard.
 *
 * Decides from maps the agent fills (nothing is compiled in):
 *   names   - LPM trie keyed by a lower-cased file name: exact names end with their NUL
 *             (prefix length counts it), name prefixes ("deepseek*") do not;
 *   inodes  - (device, inode) of denied files, for path and hash rules; entries from a hash
 *             also carry the file's ctime (ns) and lapse once the file is changed;
 *   loaders - (device, inode) of the dynamic loaders (ld.so), whose FILE argument is judged;
 *             loader_procs (set here at exec) also marks a process started from any ELF
 *             interpreter, a copy of ld.so under another name included.
 *
 * Hooks:
 *   raw_tracepoint/sched_process_exec - the new image is in place and has not run an
 *       instruction: judge comm, the executable's own file name and its (device, inode);
 *   raw_tracepoint/mmap_lock_start_locking (mmap(2) only) - an executable mapping of a denied
 *       file (the loader case "ld.so FILE": the loader maps FILE itself). The tracepoint fires
 *       when a task takes its address space's lock; guard_mmap looks only at a write lock taken
 *       inside mmap(2) (the system call number and arguments are in the task's saved registers).
 *       Nothing else pays: no system call is routed through the tracing entry path.
 *   raw_tracepoint/sys_enter (mmap only) - guard_mmap_syscall, the same check for a kernel
 *       without that tracepoint or bpf_task_pt_regs (< 5.15): the agent attaches it only when
 *       guard_mmap cannot be. Attached, it sends every system call of every process through
 *       the kernel's syscall-tracing path (1.2-1.6x on a syscall-bound loop).
 *   kprobes, fentry and BPF-LSM are not used: kernels built without kprobes (the one this
 *   project's CI runs on) or that refuse the others (EPERM) are common.
 * A denied process is sent SIGKILL (bpf_send_signal: it dies on its way back to user space)
 * and reported through the ring buffer.
 */
#include "guard_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define NAME_LEN 64
#define PATH_LEN 256
#define SIGKILL 9
#define PROT_EXEC 4

#define KIND_EXEC 1
#define KIND_MMAP 2

#define WHY_COMM 1
#define WHY_EXE_NAME 2
#define WHY_INODE 3
#define WHY_LOADED_NAME 4

#define FLAG_CHECK_CTIME 1

char LICENSE[] SEC("license") = "GPL";

struct name_key {
	__u32 prefixlen;
	__u8 data[NAME_LEN];
};

struct verdict {
	__u32 rule; /* index of the rule in the agent's table */
	__u32 flags;
	__s64 ctime;
};

struct file_key {
	__u64 dev;
	__u64 ino;
};

struct settings {
	__u32 kill;
	__u32 agent_tgid;
};

struct report {
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 kind;
	__u32 why;
	__u32 rule;
	__u32 killed;
	__u32 pad;
	__u64 dev;
	__u64 ino;
	__u64 ktime;
	char comm[16];
	char name[NAME_LEN];
	char filename[PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct name_key);
	__type(value, struct verdict);
} names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* memory grows with the entries, not the cap */
	__type(key, struct file_key);
	__type(value, struct verdict);
} inodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct file_key);
	__type(value, __u32);
} loaders SEC(".maps");

/* processes whose program is an ELF interpreter (ld.so, or a copy of it under another name):
 * a shared object without PT_INTERP, started as a program. Set at exec, by tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} loader_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} reports SEC(".maps");

/* per-CPU scratch: a name key is too large for the 512-byte stack next to the rest */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct name_key);
} scratch SEC(".maps");

static __always_inline void lower(struct name_key *key)
{
	for (int i = 0; i < NAME_LEN; i++) {
		__u8 c = key->data[i];
		if (c >= 'A' && c <= 'Z')
			key->data[i] = c + ('a' - 'A');
	}
}

/* the verdict for a lower-cased name read from kernel memory, or NULL */
static __always_inline struct verdict *judge_name(const void *src, int from_kernel_str_len)
{
	__u32 zero = 0;
	struct name_key *key = bpf_map_lookup_elem(&scratch, &zero);
	if (!key)
		return 0;
	__builtin_memset(key->data, 0, NAME_LEN);
	if (from_kernel_str_len)
		bpf_probe_read_kernel_str(key->data, NAME_LEN, src);
	else
		__builtin_memcpy(key->data, src, 16);
	key->prefixlen = NAME_LEN * 8;
	lower(key);
	return bpf_map_lookup_elem(&names, key);
}

static __always_inline struct verdict *judge_file(struct file *file, struct file_key *fk)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if (!inode)
		return 0;
	fk->ino = BPF_CORE_READ(inode, i_ino);
	fk->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	struct verdict *v = bpf_map_lookup_elem(&inodes, fk);
	if (!v)
		return 0;
	if (v->flags & FLAG_CHECK_CTIME) {
		/* ctime in nanoseconds: any change to the file (a rewrite with the mtime restored
		 * included) makes the entry lapse and the agent judges the file again */
		if (bpf_core_field_exists(inode->i_ctime_sec)) {
			/* the top bits of i_ctime_nsec are flags (multigrain timestamps, 6.13+) */
			__s64 ctime = BPF_CORE_READ(inode, i_ctime_sec) * 1000000000LL +
				      (BPF_CORE_READ(inode, i_ctime_nsec) & 0x3fffffff);
			if (ctime != v->ctime)
				return 0;
		}
	}
	return v;
}

static __always_inline int settings_kill(__u32 *agent)
{
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&settings, &zero);
	if (!s)
		return 0;
	*agent = s->agent_tgid;
	return s->kill;
}

static __always_inline void act(struct task_struct *task, struct file *file, __u32 kind, __u32 why,
				struct verdict *v, struct file_key *fk, const char *filename)
{
	__u32 agent = 0;
	int kill = settings_kill(&agent);
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (tgid <= 1 || tgid == agent)
		return;
	__u32 killed = 0;
	if (kill && bpf_send_signal(SIGKILL) == 0)
		killed = 1;
	struct report *r = bpf_ringbuf_reserve(&reports, sizeof(*r), 0);
	if (!r)
		return;
	r->pid = tgid;
	r->ppid = BPF_CORE_READ(task, real_parent, tgid);
	r->uid = BPF_CORE_READ(task, real_cred, uid.val);
	r->kind = kind;
	r->why = why;
	r->rule = v->rule;
	r->killed = killed;
	r->pad = 0;
	r->dev = fk->dev;
	r->ino = fk->ino;
	r->ktime = bpf_ktime_get_boot_ns();
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	const unsigned char *name = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	bpf_probe_read_kernel_str(r->name, sizeof(r->name), name);
	if (filename)
		bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), filename);
	else
		r->filename[0] = 0;
	bpf_ringbuf_submit(r, 0);
}

/* Whether the exec'd file looks like an ELF interpreter: 64-bit ELF, ET_DYN, and none of its
 * program headers within the first 256 bytes is PT_INTERP or PT_PHDR (a position-independent
 * executable starts with PT_PHDR then PT_INTERP; ld.so starts with PT_LOAD). */
#define ET_DYN 3
#define PT_INTERP 3
#define PT_PHDR 6
static __always_inline int looks_like_loader(struct linux_binprm *bprm)
{
	__u8 ident[5];
	__u16 type = 0, phnum = 0;
	__u64 phoff = 0;
	const char *buf = bprm->buf;

	if (bpf_probe_read_kernel(ident, sizeof(ident), buf))
		return 0;
	if (ident[0] != 0x7f || ident[1] != 'E' || ident[2] != 'L' || ident[3] != 'F' ||
	    ident[4] != 2)
		return 0;
	bpf_probe_read_kernel(&type, sizeof(type), buf + 16);
	bpf_probe_read_kernel(&phoff, sizeof(phoff), buf + 32);
	bpf_probe_read_kernel(&phnum, sizeof(phnum), buf + 56);
	if (type != ET_DYN || phnum == 0)
		return 0;
	for (int i = 0; i < 4; i++) {
		__u64 at = phoff + (__u64)i * 56;
		__u32 ptype = 0;
		if (i >= phnum || at + 4 > 256)
			break;
		bpf_probe_read_kernel(&ptype, sizeof(ptype), buf + (at & 0xff));
		if (ptype == PT_INTERP || ptype == PT_PHDR)
			return 0;
	}
	return 1;
}

SEC("raw_tracepoint/sched_process_exec")
int guard_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct file *file = BPF_CORE_READ(bprm, file);
	const char *filename = BPF_CORE_READ(bprm, filename);
	struct file_key fk = {};
	struct verdict *v;
	char comm[16];

	if (!file)
		return 0;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (looks_like_loader(bprm)) {
		__u8 one = 1;
		bpf_map_update_elem(&loader_procs, &tgid, &one, 0);
	} else {
		bpf_map_delete_elem(&loader_procs, &tgid);
	}
	v = judge_file(file, &fk);
	if (v) {
		act(task, file, KIND_EXEC, WHY_INODE, v, &fk, filename);
		return 0;
	}
	/* comm is the name exec was called with (a symlink's own name, say), cut to 15
	 * characters: judged only when shorter, as then it is the whole name */
	bpf_get_current_comm(comm, sizeof(comm));
	v = comm[14] == 0 ? judge_name(comm, 0) : 0;
	if (v) {
		act(task, file, KIND_EXEC, WHY_COMM, v, &fk, filename);
		return 0;
	}
	v = judge_name(BPF_CORE_READ(file, f_path.dentry, d_name.name), 1);
	if (v)
		act(task, file, KIND_EXEC, WHY_EXE_NAME, v, &fk, filename);
	return 0;
}

/* mmap(2) of a file with PROT_EXEC: denied by (device, inode), or - when the mapping process is
 * a dynamic loader run as a program ("ld.so FILE", which maps FILE itself) - by FILE's name.
 * prot and fd are the system call's arguments as the task entered the kernel. */
#define NR_MMAP 9
static __always_inline int judge_mmap(struct task_struct *task, unsigned long prot, long fd)
{
	struct file_key fk = {};
	struct verdict *v;
	struct file *file = 0;

	if (!(prot & PROT_EXEC) || fd < 0)
		return 0;
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return 0;
	v = judge_file(file, &fk);
	if (v) {
		act(task, file, KIND_MMAP, WHY_INODE, v, &fk, 0);
		return 0;
	}
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (!bpf_map_lookup_elem(&loader_procs, &tgid)) {
		struct file *exe = BPF_CORE_READ(task, mm, exe_file);
		if (!exe)
			return 0;
		struct file_key ek = {};
		struct inode *einode = BPF_CORE_READ(exe, f_inode);
		if (!einode)
			return 0;
		ek.ino = BPF_CORE_READ(einode, i_ino);
		ek.dev = BPF_CORE_READ(einode, i_sb, s_dev);
		if (!bpf_map_lookup_elem(&loaders, &ek))
			return 0;
	}
	v = judge_name(BPF_CORE_READ(file, f_path.dentry, d_name.name), 1);
	if (v)
		act(task, file, KIND_MMAP, WHY_LOADED_NAME, v, &fk, 0);
	return 0;
}

/* mmap_lock_start_locking(mm, write): mmap(2) takes its address space's lock for writing
 * (vm_mmap_pgoff, after the file is resolved and before anything is mapped). The lock is also
 * taken by page faults that miss the per-VMA lock, munmap, mprotect, brk, /proc readers...: a
 * read lock, another system call or another task's address space returns at once. A SIGKILL
 * sent here kills the task on its way back to user space: FILE's code never runs.
 * Older kernels pass (mm, memcg_path, write): the path's pointer, never 0, takes the bool's
 * place and read locks are looked at too (args[2] cannot be read: the kernel refuses to attach
 * a program that reads past the tracepoint's arguments); orig_ax still limits it to mmap(2). */
SEC("raw_tracepoint/mmap_lock_start_locking")
int guard_mmap(struct bpf_raw_tracepoint_args *ctx)
{
	if (!ctx->args[1])
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	if ((void *)ctx->args[0] != (void *)task->mm)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs || regs->orig_ax != NR_MMAP)
		return 0;
	return judge_mmap(task, regs->dx, (long)regs->r8);
}

/* The fallback where guard_mmap cannot be attached: raw_syscalls/sys_enter runs for every
 * system call; anything but mmap returns at once. */
SEC("raw_tracepoint/sys_enter")
int guard_mmap_syscall(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] != NR_MMAP)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	return judge_mmap((struct task_struct *)bpf_get_current_task(), BPF_CORE_READ(regs, dx),
			  (long)BPF_CORE_READ(regs, r8));
}
