// SPDX-License-Identifier: GPL-2.0
/* Proscribe's DNS sender map: who sent each DNS query, keyed by what the resolver and the
 * capture see of it, the query's source (address, port).
 *
 * Record-only: every program returns 1 (let the packet or call through) and never rewrites.
 *   cgroup/sendmsg4|6, cgroup/connect4|6 - in the sender's own context, when the destination
 *       port the program asked for is 53: socket cookie -> (pid, uid, comm). The local port may
 *       not be bound yet (implicit bind happens after these hooks), hence the second step:
 *   cgroup_skb/egress - sees the packet with its final source port; a packet whose socket's
 *       cookie is in "socks" is recorded as (family, protocol, source address, source port)
 *       -> sender in "senders", which the agent reads. Runs after netfilter's OUTPUT chain,
 *       so a query redirected to the agent's resolver is still matched (by cookie, not port).
 * kprobes and fentry are not used (this project's kernel refuses them).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

/* The one kernel field read, relocated against the running kernel's BTF (CO-RE). */
struct task_struct {
	struct task_struct *group_leader;
	char comm[16];
} __attribute__((preserve_access_index));

char LICENSE[] SEC("license") = "GPL";

struct sender {
	__u32 pid;
	__u32 uid;
	__u64 ktime;
	char comm[16];
};

struct addr_key {
	__u8 family;   /* 4 or 6 */
	__u8 protocol; /* IPPROTO_UDP or IPPROTO_TCP */
	__u16 port;    /* source port, host order */
	__u32 addr[4]; /* source address, network order; IPv4 in addr[0] */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sender);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct addr_key);
	__type(value, struct sender);
} senders SEC(".maps");

static __always_inline void remember(void *ctx, __u32 user_port)
{
	struct sender s = {};
	struct task_struct *leader;
	__u64 cookie;

	if (user_port != bpf_htons(53))
		return;
	cookie = bpf_get_socket_cookie(ctx);
	s.pid = bpf_get_current_pid_tgid() >> 32;
	s.uid = (__u32)bpf_get_current_uid_gid();
	s.ktime = bpf_ktime_get_ns();
	/* the process's name (its main thread's comm), not the sending thread's ("isc-net-0000") */
	leader = BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), group_leader);
	BPF_CORE_READ_STR_INTO(&s.comm, leader, comm);
	bpf_map_update_elem(&socks, &cookie, &s, BPF_ANY);
}

SEC("cgroup/sendmsg4")
int dns_sendmsg4(struct bpf_sock_addr *ctx)
{
	remember(ctx, ctx->user_port);
	return 1;
}

SEC("cgroup/sendmsg6")
int dns_sendmsg6(struct bpf_sock_addr *ctx)
{
	remember(ctx, ctx->user_port);
	return 1;
}

SEC("cgroup/connect4")
int dns_connect4(struct bpf_sock_addr *ctx)
{
	remember(ctx, ctx->user_port);
	return 1;
}

SEC("cgroup/connect6")
int dns_connect6(struct bpf_sock_addr *ctx)
{
	remember(ctx, ctx->user_port);
	return 1;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	struct addr_key key = {};
	struct sender *s;
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u8 ip[40];
	__u16 sport;
	__u32 off;

	s = bpf_map_lookup_elem(&socks, &cookie);
	if (!s)
		return 1;
	if (skb->protocol == bpf_htons(0x0800)) {
		if (bpf_skb_load_bytes(skb, 0, ip, 20))
			return 1;
		key.family = 4;
		key.protocol = ip[9];
		__builtin_memcpy(&key.addr[0], &ip[12], 4);
		off = (ip[0] & 0x0f) * 4;
	} else if (skb->protocol == bpf_htons(0x86DD)) {
		if (bpf_skb_load_bytes(skb, 0, ip, 40))
			return 1;
		key.family = 6;
		key.protocol = ip[6]; /* extension headers: not followed (DNS does not use them) */
		__builtin_memcpy(key.addr, &ip[8], 16);
		off = 40;
	} else {
		return 1;
	}
	if (key.protocol != IPPROTO_UDP && key.protocol != IPPROTO_TCP)
		return 1;
	if (bpf_skb_load_bytes(skb, off, &sport, 2))
		return 1;
	key.port = bpf_ntohs(sport);
	bpf_map_update_elem(&senders, &key, s, BPF_ANY);
	return 1;
}
