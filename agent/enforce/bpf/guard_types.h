/* The few kernel types the exec guard reads, declared for CO-RE.
 *
 * Only the fields used are declared: with preserve_access_index every access is recorded as a
 * relocation by name, and libbpf rewrites the offsets against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux) at load time. This replaces a generated vmlinux.h (several MB,
 * different on every kernel) with a header that is small and the same everywhere.
 */
#ifndef PROSCRIBE_GUARD_TYPES_H
#define PROSCRIBE_GUARD_TYPES_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LPM_TRIE = 11,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* x86-64 registers as saved at system call entry: the arguments are di, si, dx, r10, r8, r9 */
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip,
		cs, flags, sp, ss;
};

struct qstr {
	const unsigned char *name;
};

struct super_block {
	__u32 s_dev;
};

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
	__s64 i_ctime_sec;
	__u32 i_ctime_nsec;
};

struct dentry {
	struct qstr d_name;
};

struct path {
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
};

struct mm_struct {
	struct file *exe_file;
};

typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	int tgid;
	struct files_struct *files;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	const struct cred *real_cred;
	char comm[16];
};

struct linux_binprm {
	char buf[256]; /* the file's first bytes (BINPRM_BUF_SIZE): its ELF header */
	struct file *file;
	const char *filename;
};

#pragma clang attribute pop

#endif
