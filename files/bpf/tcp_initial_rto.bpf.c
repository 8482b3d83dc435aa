// SPDX-License-Identifier: GPL-3.0-or-later
/* Copyright: netbpf.tcp_rto contributors
 *
 * tcp_initial_rto: a sock_ops program that sets the initial retransmission timeout (the first
 * SYN / SYN-ACK timeout) per remote address. Maps and byte layouts are the contract in
 * plugins/module_utils/rto_program.py: change both together. Rebuild with files/bpf/build.
 *
 * Minimum kernel 4.16: the program reads bpf_sock_ops.is_fullsock and .state (added in 4.16).
 * No loops and no calls but helpers: the verifier walks a few short paths (about 100 insns;
 * checked on 5.10, 6.1 and 6.18).
 */
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

/* BTF-defined maps, as libbpf's bpf_helpers.h spells them (not included: the build needs only
 * clang and the kernel headers). Each attribute is a member whose BTF type carries the value: an
 * integer as the element count of an array type, a key or value type as the pointed-to type. */
#define __uint(name, val)	int (*name)[val]
#define __type(name, val)	typeof(val) *name

/* Helper id from enum bpf_func_id; bpf_map_lookup_elem is not GPL-only. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

#define MAX_RULES		1024
#define DEFAULT_HIT_SLOT	MAX_RULES	/* hits[1024] counts connections given the default */
#define DIRECTION_OUTGOING	1
#define DIRECTION_INCOMING	2
#define AF_INET			2
#define AF_INET6		10
#define FULL_PREFIX		128		/* look the whole address up in the trie */
#define SOCK_OPS_CONTINUE	1		/* the only return value that keeps the reply */

/* IPv4 rules live in ::ffff:0:0/96: addr[2] holds the bytes 00 00 ff ff, read as a native u32. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define V4_MAPPED_WORD		0xffff0000
#else
#define V4_MAPPED_WORD		0x0000ffff
#endif

struct rule_key { __u32 prefixlen, addr[4]; };	/* prefixlen host order, addr network order */
struct rule_value { __u32 rto_jiffies, hit_slot; };
struct config_value { __u32 default_rto_jiffies, directions; };	/* 0: no default; DIRECTION_* */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct rule_key);
	__type(value, struct rule_value);
	__uint(max_entries, MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* the kernel refuses an LPM trie without it */
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config_value);
	__uint(max_entries, 1);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, MAX_RULES + 1);
} hits SEC(".maps");

static __attribute__((always_inline)) void count_hit(__u32 slot)
{
	__u64 *counter = bpf_map_lookup_elem(&hits, &slot);

	/* Atomic although per CPU: the softirq of a passive open can interrupt connect() on the same
	 * CPU and run this program too. A slot outside the map gives NULL. */
	if (counter)
		__sync_fetch_and_add(counter, 1);
}

SEC("sockops")
int tcp_initial_rto(struct bpf_sock_ops *skops)
{
	struct config_value *config_value;
	struct rule_value *rule;
	struct rule_key key;
	__u32 zero = 0, direction, remote_ip4;

	/* TIMEOUT_INIT (1) asks for the SYN / SYN-ACK timeout in jiffies. Return 1 on every path:
	 * any other return value makes the kernel discard the reply of every program on the socket. */
	if (skops->op != BPF_SOCK_OPS_TIMEOUT_INIT)
		return SOCK_OPS_CONTINUE;
	/* All programs share one reply, the socket's own cgroup's run first: a positive reply comes
	 * from a cgroup closer to the socket, and the most specific cgroup wins. */
	if ((int)skops->reply > 0)
		return SOCK_OPS_CONTINUE;

	config_value = bpf_map_lookup_elem(&config, &zero);
	if (!config_value)
		return SOCK_OPS_CONTINUE;
	/* connect() asks on the full socket in SYN_SENT; a passive open asks on the request socket
	 * (is_fullsock 0) or, with TCP Fast Open, on the child socket in SYN_RECV. */
	direction = skops->is_fullsock && skops->state == BPF_TCP_SYN_SENT ?
		    DIRECTION_OUTGOING : DIRECTION_INCOMING;
	if (!(config_value->directions & direction))
		return SOCK_OPS_CONTINUE;

	/* The addresses are in network order, as the keys are: copy the words as they are. Every
	 * key byte is written: the verifier refuses a helper reading uninitialised stack. */
	key.prefixlen = FULL_PREFIX;
	if (skops->family == AF_INET) {
		remote_ip4 = skops->remote_ip4;
		/* Without this barrier clang merges this load and remote_ip6[3]'s into one load through
		 * a computed ctx pointer, which the verifier refuses ("modified ctx ptr"). */
		asm volatile("" : "+r"(remote_ip4));
		key.addr[0] = 0;
		key.addr[1] = 0;
		key.addr[2] = V4_MAPPED_WORD;
		key.addr[3] = remote_ip4;
	} else if (skops->family == AF_INET6) {
		key.addr[0] = skops->remote_ip6[0];
		key.addr[1] = skops->remote_ip6[1];
		key.addr[2] = skops->remote_ip6[2];
		key.addr[3] = skops->remote_ip6[3];
	} else {
		return SOCK_OPS_CONTINUE;
	}

	/* reply is in jiffies; <= 0 means the kernel default (1 s); 5.18+ caps it at 120 s. */
	rule = bpf_map_lookup_elem(&rules, &key);
	if (rule) {
		skops->reply = rule->rto_jiffies;
		count_hit(rule->hit_slot);
	} else if (config_value->default_rto_jiffies > 0) {
		skops->reply = config_value->default_rto_jiffies;
		count_hit(DEFAULT_HIT_SLOT);
	}
	return SOCK_OPS_CONTINUE;
}

char _license[] SEC("license") = "GPL";	/* GPL-compatible, as the collection is */
