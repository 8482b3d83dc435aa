// SPDX-License-Identifier: GPL-3.0-or-later
/* Copyright: netbpf.tcp_rto contributors
 *
 * tcp_initial_rto: a sock_ops program that sets the initial retransmission timeout (the first
 * SYN / SYN-ACK timeout) per remote address, optionally bounds how long connect() keeps
 * retransmitting its SYN (TCP_SYNCNT), and counts what the handshakes it answered did (per rule
 * slot: completed handshakes, SYN and SYN-ACK retransmits, an estimate of the spurious ones, a
 * histogram of handshake round trips). With rto_ms: auto a rule (or the default) answers from what
 * the handshakes to each remote host taught (the learned map, RFC 6298's SRTT + 4 RTTVAR over
 * handshake round trips; docs/tcp_initial_rto.md). Maps and byte layouts are the contract in
 * plugins/module_utils/rto_program.py: change both together. Rebuild with files/bpf/build.
 *
 * Minimum kernel 4.16: the program reads bpf_sock_ops.is_fullsock, .state, .srtt_us and
 * .total_retrans, .packets_out and calls bpf_sock_ops_cb_flags_set (all added in 4.16). bpf_setsockopt(TCP_SYNCNT)
 * is refused at run time by kernels that lack it (probed by the loader before it stores a count).
 * No loops and no calls but helpers: the verifier walks short paths (checked on 5.10, 6.1, 6.18).
 */
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

/* BTF-defined maps, as libbpf's bpf_helpers.h spells them (not included: the build needs only
 * clang and the kernel headers). Each attribute is a member whose BTF type carries the value: an
 * integer as the element count of an array type, a key or value type as the pointed-to type. */
#define __uint(name, val)	int (*name)[val]
#define __type(name, val)	typeof(val) *name

/* Helper ids from enum bpf_func_id; none of them is GPL-only. Every function below is inlined:
 * the loader refuses bpf-to-bpf calls. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) =
	(void *)BPF_FUNC_map_update_elem;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_delete_elem;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static long (*bpf_setsockopt)(void *ctx, int level, int optname, void *optval, int optlen) =
	(void *)BPF_FUNC_setsockopt;
static long (*bpf_sock_ops_cb_flags_set)(struct bpf_sock_ops *skops, int flags) =
	(void *)BPF_FUNC_sock_ops_cb_flags_set;

#define MAX_RULES		1024
#define DEFAULT_HIT_SLOT	MAX_RULES	/* hits[1024] and stats[1024] count the default */
#define DIRECTION_OUTGOING	1
#define DIRECTION_INCOMING	2
#define AF_INET			2
#define AF_INET6		10
#define FULL_PREFIX		128		/* look the whole address up in the trie */
#define SOCK_OPS_CONTINUE	1		/* the only return value that keeps the reply */
#define SOL_TCP			6
#define TCP_SYNCNT		7		/* include/uapi/linux/tcp.h */
#define RETRANS_CB_ERR_ARG	2		/* RETRANS_CB: args[2] is the transmit's error */
/* log2 buckets of handshake RTT in µs: bucket b counts samples in (2^(b-1), 2^b] (b 0: <= 1 µs).
 * srtt_us is a u32 holding 8 x the RTT, so a sample is below 2^29 µs and bucket 31 is never
 * exceeded; a power of two lets a mask prove the index to the verifier. */
#define RTT_BUCKETS		32
/* A TCP timestamp (TSval) counts milliseconds: an RTT taken from one can exceed the true time by
 * one tick; the other 1 ms covers the time from the SYN's transmit to the RETRANS_CB. */
#define TS_SLACK_US		2000
#define NSEC_PER_USEC		1000
#define NS_TO_US(ns)		((ns) / NSEC_PER_USEC)
#define NSEC_PER_SEC		1000000000ULL
#define USEC_PER_SEC		1000000ULL
#define PERCENT			100
/* Divisions as macros: the object's line info quotes code lines, and a test wants no '/' in them. */
#define TIMES_PERCENT(x, pct)	((x) * (pct) / PERCENT)
#define US_TO_JIFFIES_UP(us, hz)	(((us) * (hz) + USEC_PER_SEC - 1) / USEC_PER_SEC)
/* rule_value.flags and config_value.default_flags */
#define RTO_AUTO		1		/* rto_ms: auto: learned, rto_jiffies is its upper bound and fallback */
#define LEARNED_ENTRIES		4096		/* the loader creates the map with auto_table_size entries */
#define AUTO_CONN_ENTRIES	4096

/* IPv4 rules live in ::ffff:0:0/96: addr[2] holds the bytes 00 00 ff ff, read as a native u32. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define V4_MAPPED_WORD		0xffff0000
#else
#define V4_MAPPED_WORD		0x0000ffff
#endif

struct rule_key { __u32 prefixlen, addr[4]; };	/* prefixlen host order, addr network order */
/* syn_retries: TCP_SYNCNT for connect()s the rule answers; 0 leaves the socket's own. flags:
 * RTO_AUTO, the answer is learned and rto_jiffies bounds it from above. */
struct rule_value { __u32 rto_jiffies, hit_slot, syn_retries, flags; };
/* default_rto_jiffies 0: no default; directions: DIRECTION_*; default_syn_retries as above;
 * default_flags as a rule's flags. The auto_ fields hold for every rule and default with RTO_AUTO:
 * the learned answer is clamp(estimate * auto_factor_pct / 100, auto_min_jiffies, rto_jiffies) once
 * a host has auto_min_samples samples, the last younger than auto_ttl_s, and at most
 * auto_retransmit_budget unforgiven retransmits; hz converts the estimate's µs to jiffies. */
struct config_value {
	__u32 default_rto_jiffies, directions, default_syn_retries, default_flags;
	__u32 auto_min_jiffies, auto_factor_pct, auto_min_samples, auto_ttl_s, auto_retransmit_budget, hz;
};

/* What the handshakes to one remote host taught (RFC 6298 section 2 over handshake round trips,
 * scaled as the kernel's tcp_rtt_estimator() keeps them: srtt_us8 = 8 SRTT, rttvar_us4 = 4 RTTVAR,
 * so SRTT + 4 RTTVAR = srtt_us8 / 8 + rttvar_us4). Updated in place without a lock: two CPUs
 * learning about one host at the same moment can lose one sample, nothing worse. */
struct learned_value {
	__u64 updated_ns;	/* ktime of the last sample */
	__u64 srtt_us8;
	__u64 rttvar_us4;
	__u32 samples;		/* since the entry was made (or remade after auto_ttl_s without samples) */
	__u32 retransmits;	/* SYN / SYN-ACK retransmits, less one per clean handshake since */
};

/* What the handshakes of one slot did, on one CPU (the loader sums the CPUs). */
struct slot_stats {
	__u64 handshakes_outgoing;	/* ACTIVE_ESTABLISHED: connect() completed */
	__u64 handshakes_incoming;	/* PASSIVE_ESTABLISHED: a child socket for accept() */
	__u64 syn_retransmits;		/* RETRANS_CB in SYN_SENT: sent, completed or not */
	__u64 synack_retransmits;	/* the child's total_retrans (= req->num_retrans) */
	__u64 spurious_retransmits;	/* handshakes whose last SYN retransmit was not needed */
	__u64 rtt_sum_us;		/* sum of the samples in rtt_buckets */
	__u64 rtt_min_us;		/* this CPU's smallest sample; 0: none yet */
	__u64 rtt_buckets[RTT_BUCKETS];
};

/* A connection in SYN_SENT (or one that left it since), the same in every callback. */
struct conn_key { __u32 remote[4], local[4], remote_port, local_port; };
/* The answer a connect() keeps (rto_ms: auto), with its initial sequence number: a record left by
 * an earlier connection on the same addresses and ports carries another one and is not used. */
struct auto_conn_value { __u32 rto_jiffies, isn; };

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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct slot_stats);
	__uint(max_entries, MAX_RULES + 1);
} stats SEC(".maps");

/* When each connection still in its handshake last retransmitted its SYN (ktime ns). An LRU hash,
 * not socket storage: that needs BTF the kernel may refuse, and a key the verifier accepts on
 * 4.16. Entries of connections that never complete are evicted by newer ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct conn_key);
	__type(value, __u64);
	__uint(max_entries, 4096);
} syn_rtx_time SEC(".maps");

/* Remote host (as the rules key spells it, IPv4 mapped) -> what its handshakes taught. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32[4]);
	__type(value, struct learned_value);
	__uint(max_entries, LEARNED_ENTRIES);
} learned SEC(".maps");

/* The learned answer a connect() whose SYN was retransmitted keeps: from the second SYN timeout on
 * the kernel asks again (retransmits_timed_out(), for its give-up deadline), and the connection
 * keeps the answer it had while the learned map moves on. Written at the first SYN retransmit,
 * not at connect(): a handshake that needs no retransmit (nearly all) costs no map update. An
 * LRU hash like syn_rtx_time (socket storage needs BTF the kernel may refuse); deleted at
 * ACTIVE_ESTABLISHED, evicted for connections that never complete. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct conn_key);
	__type(value, struct auto_conn_value);
	__uint(max_entries, AUTO_CONN_ENTRIES);
} auto_conn SEC(".maps");

static __attribute__((always_inline)) void count_hit(__u32 slot)
{
	__u64 *counter = bpf_map_lookup_elem(&hits, &slot);

	/* Atomic although per CPU: the softirq of a passive open can interrupt connect() on the same
	 * CPU and run this program too. A slot outside the map gives NULL. */
	if (counter)
		__sync_fetch_and_add(counter, 1);
}

/* The remote address as the rules trie holds it (IPv4 mapped into IPv6). -> 0, or -1 for a family
 * the rules cannot name. The addresses are in network order, as the keys are: the words are copied
 * as they are. Every word is written: the verifier refuses a helper reading uninitialised stack. */
static __attribute__((always_inline)) int remote_address(struct bpf_sock_ops *skops, __u32 addr[4])
{
	__u32 remote_ip4;

	if (skops->family == AF_INET) {
		remote_ip4 = skops->remote_ip4;
		/* Without this barrier clang merges this load and remote_ip6[3]'s into one load through
		 * a computed ctx pointer, which the verifier refuses ("modified ctx ptr"). */
		asm volatile("" : "+r"(remote_ip4));
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = V4_MAPPED_WORD;
		addr[3] = remote_ip4;
		return 0;
	}
	if (skops->family == AF_INET6) {
		addr[0] = skops->remote_ip6[0];
		addr[1] = skops->remote_ip6[1];
		addr[2] = skops->remote_ip6[2];
		addr[3] = skops->remote_ip6[3];
		return 0;
	}
	return -1;
}

/* The slot that counts a connection to addr, or -1 where the instance gives it no value (no rule
 * and no default: the program leaves it to the kernel and does not count it either). A callback
 * after TIMEOUT_INIT looks the rules up again: a rule changed in between counts the connection
 * where the rules place it now. */
static __attribute__((always_inline)) int slot_of(struct config_value *config_value, struct rule_key *key,
					   __u32 *flags, __u32 *rto_jiffies)
{
	struct rule_value *rule = bpf_map_lookup_elem(&rules, key);

	if (rule) {
		*flags = rule->flags;
		*rto_jiffies = rule->rto_jiffies;
		return rule->hit_slot;
	}
	*flags = config_value->default_flags;
	*rto_jiffies = config_value->default_rto_jiffies;
	if (config_value->default_rto_jiffies > 0)
		return DEFAULT_HIT_SLOT;
	return -1;
}

static __attribute__((always_inline)) void conn_key_of(struct bpf_sock_ops *skops, struct rule_key *remote,
					struct conn_key *conn)
{
	__u32 local_ip4;

	conn->remote[0] = remote->addr[0];
	conn->remote[1] = remote->addr[1];
	conn->remote[2] = remote->addr[2];
	conn->remote[3] = remote->addr[3];
	if (skops->family == AF_INET) {
		local_ip4 = skops->local_ip4;
		/* As for remote_ip4 in remote_address(). (No comment shares a line with code: the
		 * object's line info quotes code lines, and a test wants no path-like text in it.) */
		asm volatile("" : "+r"(local_ip4));
		conn->local[0] = 0;
		conn->local[1] = 0;
		conn->local[2] = 0;
		conn->local[3] = local_ip4;
	} else {
		conn->local[0] = skops->local_ip6[0];
		conn->local[1] = skops->local_ip6[1];
		conn->local[2] = skops->local_ip6[2];
		conn->local[3] = skops->local_ip6[3];
	}
	conn->remote_port = skops->remote_port;
	conn->local_port = skops->local_port;
}

/* ceil(log2(rtt_us)) for rtt_us < 2^32, without a loop: the bucket whose upper bound 2^b µs
 * is the first at or above the sample. */
static __attribute__((always_inline)) __u32 rtt_bucket(__u64 rtt_us)
{
	__u64 v;
	__u32 b = 0;

	if (rtt_us <= 1)
		return 0;
	v = rtt_us - 1;
	if (v >> 16) { v >>= 16; b += 16; }
	if (v >> 8) { v >>= 8; b += 8; }
	if (v >> 4) { v >>= 4; b += 4; }
	if (v >> 2) { v >>= 2; b += 2; }
	if (v >> 1) { v >>= 1; b += 1; }
	return b + v;
}

/* A completed handshake to the host addr teaches: a clean one (sample_us its round trip) is a
 * sample and forgives one retransmit; one that retransmitted gives sample_us 0 (its srtt may span
 * an earlier SYN: no sample) and adds the retransmits not counted yet (charge: SYN-ACKs; SYNs
 * count at RETRANS_CB). A host whose last sample is older than auto_ttl_s starts afresh. */
static __attribute__((always_inline)) void learn(struct config_value *config_value, __u32 addr[4], __u64 sample_us,
					  __u64 charge)
{
	struct learned_value *known = bpf_map_lookup_elem(&learned, addr);
	struct learned_value first = {};
	__u64 now = bpf_ktime_get_ns(), err, srtt_us;

	if (known && now - known->updated_ns <= config_value->auto_ttl_s * NSEC_PER_SEC) {
		if (charge)
			__sync_fetch_and_add(&known->retransmits, charge);
		if (!sample_us)
			return;
		/* SRTT' = 7/8 SRTT + 1/8 R; RTTVAR' = 3/4 RTTVAR + 1/4 |SRTT - R| (with the old SRTT) */
		srtt_us = known->srtt_us8 >> 3;
		err = sample_us > srtt_us ? sample_us - srtt_us : srtt_us - sample_us;
		known->rttvar_us4 = known->rttvar_us4 - (known->rttvar_us4 >> 2) + err;
		known->srtt_us8 = known->srtt_us8 - srtt_us + sample_us;
		if (known->samples < 0xffffffff)
			known->samples++;
		if (known->retransmits)
			known->retransmits--;
		known->updated_ns = now;
		return;
	}
	if (!sample_us)
		return;
	/* The first sample R: SRTT = R, RTTVAR = R / 2 */
	first.updated_ns = now;
	first.srtt_us8 = sample_us << 3;
	first.rttvar_us4 = sample_us << 1;
	first.samples = 1;
	bpf_map_update_elem(&learned, addr, &first, BPF_ANY);
}

/* The jiffies a connection to addr gets under rto_ms: auto with upper bound max_jiffies: what its
 * handshakes taught, or max_jiffies while they taught too little, too long ago, or too many
 * retransmits (an overloaded listener looks like loss: a lower RTO would only add SYNs). */
static __attribute__((always_inline)) __u32 learned_rto(struct config_value *config_value, __u32 addr[4],
						 __u32 max_jiffies)
{
	struct learned_value *known = bpf_map_lookup_elem(&learned, addr);
	__u64 estimate_us, jiffies;

	if (!known || known->samples < config_value->auto_min_samples ||
	    known->retransmits > config_value->auto_retransmit_budget ||
	    bpf_ktime_get_ns() - known->updated_ns > config_value->auto_ttl_s * NSEC_PER_SEC)
		return max_jiffies;
	estimate_us = (known->srtt_us8 >> 3) + known->rttvar_us4;
	estimate_us = TIMES_PERCENT(estimate_us, config_value->auto_factor_pct);
	/* rounded up, as msecs_to_jiffies() rounds */
	jiffies = US_TO_JIFFIES_UP(estimate_us, config_value->hz);
	if (jiffies < config_value->auto_min_jiffies)
		jiffies = config_value->auto_min_jiffies;
	if (jiffies > max_jiffies)
		jiffies = max_jiffies;
	return jiffies;
}

/* ACTIVE/PASSIVE_ESTABLISHED: one completed handshake of a connection the instance answered. */
static __attribute__((always_inline)) void count_handshake(struct bpf_sock_ops *skops, struct config_value *config_value,
					    struct rule_key *key, __u32 direction)
{
	struct slot_stats *slot_stats;
	struct conn_key conn;
	__u64 *retransmitted_ns, elapsed_us, rtt_us, retransmits;
	__u32 slot, bucket, flags, rto_jiffies;
	int found = slot_of(config_value, key, &flags, &rto_jiffies);

	if (found < 0)
		return;
	slot = found;
	/* srtt_us holds 8 x the smoothed RTT; at ESTABLISHED it is the handshake's one sample (0: no
	 * sample, e.g. a retransmitted SYN answered without TCP timestamps). */
	rtt_us = skops->srtt_us >> 3;
	/* Retransmits of this handshake: for connect() the SYNs, for a passive open the child copies
	 * the request socket's SYN-ACK retransmits (tcp_create_openreq_child: total_retrans =
	 * req->num_retrans). */
	retransmits = skops->total_retrans;
	if (flags & RTO_AUTO) {
		learn(config_value, key->addr, retransmits ? 0 : rtt_us,
		      direction == DIRECTION_INCOMING ? retransmits : 0);
		if (direction == DIRECTION_OUTGOING && retransmits) {
			conn_key_of(skops, key, &conn);
			bpf_map_delete_elem(&auto_conn, &conn);
		}
	}
	slot_stats = bpf_map_lookup_elem(&stats, &slot);
	if (!slot_stats)
		return;
	if (direction == DIRECTION_OUTGOING) {
		__sync_fetch_and_add(&slot_stats->handshakes_outgoing, 1);
	} else {
		__sync_fetch_and_add(&slot_stats->handshakes_incoming, 1);
		if (retransmits)
			__sync_fetch_and_add(&slot_stats->synack_retransmits, retransmits);
	}
	if (!retransmits) {
		/* Only handshakes that did not retransmit: their sample is the path's round trip, not
		 * the time since an earlier SYN or SYN-ACK. */
		if (!skops->srtt_us)
			return;
		/* The mask changes nothing (the bucket is at most 31); it bounds the index for the
		 * verifier, which does not follow rtt_bucket()'s arithmetic. */
		bucket = rtt_bucket(rtt_us) & (RTT_BUCKETS - 1);
		__sync_fetch_and_add(&slot_stats->rtt_buckets[bucket], 1);
		__sync_fetch_and_add(&slot_stats->rtt_sum_us, rtt_us);
		/* Not atomic: an interrupting callback on this CPU can only leave a sample that is not
		 * the smallest, which makes the spurious estimate below more cautious, never bolder. */
		if (!slot_stats->rtt_min_us || rtt_us < slot_stats->rtt_min_us)
			slot_stats->rtt_min_us = rtt_us ? rtt_us : 1;
		return;
	}
	if (direction != DIRECTION_OUTGOING)
		return;
	/* The SYN-ACK that completed a retransmitted connect() answered an earlier SYN when (with TCP
	 * timestamps) its echoed timestamp is older than the last retransmit: the sample then spans
	 * more than the time since that retransmit; or (without them, no sample) when it came sooner
	 * after the last retransmit than the fastest handshake this CPU saw for the slot. */
	conn_key_of(skops, key, &conn);
	retransmitted_ns = bpf_map_lookup_elem(&syn_rtx_time, &conn);
	if (!retransmitted_ns)
		return;
	elapsed_us = NS_TO_US(bpf_ktime_get_ns() - *retransmitted_ns);
	if (rtt_us ? rtt_us > elapsed_us + TS_SLACK_US
		   : slot_stats->rtt_min_us && elapsed_us < slot_stats->rtt_min_us)
		__sync_fetch_and_add(&slot_stats->spurious_retransmits, 1);
	bpf_map_delete_elem(&syn_rtx_time, &conn);
}

/* RETRANS_CB of a socket in SYN_SENT: a SYN retransmit, counted whether or not the connection
 * ever completes; its time is kept for the spurious estimate. */
static __attribute__((always_inline)) void count_syn_retransmit(struct bpf_sock_ops *skops, struct config_value *config_value,
						 struct rule_key *key)
{
	struct slot_stats *slot_stats;
	struct learned_value *known;
	struct auto_conn_value *kept, answer;
	struct conn_key conn;
	__u64 now;
	__u32 slot, flags, rto_jiffies;
	int found;

	if (skops->state != BPF_TCP_SYN_SENT || skops->args[RETRANS_CB_ERR_ARG])
		return;	/* a data retransmit, or the SYN did not go out */
	found = slot_of(config_value, key, &flags, &rto_jiffies);
	if (found < 0)
		return;
	slot = found;
	conn_key_of(skops, key, &conn);
	if (flags & RTO_AUTO) {
		/* The first retransmit keeps the answer the connection has (before its own retransmit
		 * counts against the host). In SYN_SENT snd_una is the initial sequence number. */
		kept = bpf_map_lookup_elem(&auto_conn, &conn);
		if (!kept || kept->isn != skops->snd_una) {
			answer.rto_jiffies = learned_rto(config_value, key->addr, rto_jiffies);
			answer.isn = skops->snd_una;
			bpf_map_update_elem(&auto_conn, &conn, &answer, BPF_ANY);
		}
		/* Counted at once, not at ESTABLISHED: a host that never answers must exhaust its budget too. */
		known = bpf_map_lookup_elem(&learned, key->addr);
		if (known)
			__sync_fetch_and_add(&known->retransmits, 1);
	}
	slot_stats = bpf_map_lookup_elem(&stats, &slot);
	if (slot_stats)
		__sync_fetch_and_add(&slot_stats->syn_retransmits, 1);
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&syn_rtx_time, &conn, &now, BPF_ANY);
}

SEC("sockops")
int tcp_initial_rto(struct bpf_sock_ops *skops)
{
	struct config_value *config_value;
	struct rule_value *rule;
	struct rule_key key;
	struct conn_key conn;
	struct auto_conn_value *kept = 0;
	__u32 zero = 0, direction, op = skops->op;
	__u32 rto_jiffies, flags;
	int syn_retries = 0;

	/* Return 1 on every path: any other return value makes the kernel discard the reply of every
	 * program on the socket. Other ops (and those of kernels newer than this program) pass. */
	if (op != BPF_SOCK_OPS_TIMEOUT_INIT && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_RETRANS_CB)
		return SOCK_OPS_CONTINUE;
	/* TIMEOUT_INIT: all programs share one reply, the socket's own cgroup's run first: a positive
	 * reply comes from a cgroup closer to the socket, and the most specific cgroup wins. */
	if (op == BPF_SOCK_OPS_TIMEOUT_INIT && (int)skops->reply > 0)
		return SOCK_OPS_CONTINUE;

	config_value = bpf_map_lookup_elem(&config, &zero);
	if (!config_value)
		return SOCK_OPS_CONTINUE;
	/* TIMEOUT_INIT: connect() asks on the full socket in SYN_SENT; a passive open asks on the
	 * request socket (is_fullsock 0) or, with TCP Fast Open, on the child socket in SYN_RECV.
	 * RETRANS_CB is enabled only on connect()s' sockets, below. */
	if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		direction = DIRECTION_INCOMING;
	else if (op != BPF_SOCK_OPS_TIMEOUT_INIT)
		direction = DIRECTION_OUTGOING;
	else
		direction = skops->is_fullsock && skops->state == BPF_TCP_SYN_SENT ?
			    DIRECTION_OUTGOING : DIRECTION_INCOMING;
	/* A direction the instance leaves alone is neither answered nor counted. */
	if (!(config_value->directions & direction))
		return SOCK_OPS_CONTINUE;

	key.prefixlen = FULL_PREFIX;
	if (remote_address(skops, key.addr))
		return SOCK_OPS_CONTINUE;

	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		count_handshake(skops, config_value, &key, direction);
		return SOCK_OPS_CONTINUE;
	}
	if (op == BPF_SOCK_OPS_RETRANS_CB) {
		count_syn_retransmit(skops, config_value, &key);
		return SOCK_OPS_CONTINUE;
	}

	/* reply is in jiffies; <= 0 means the kernel default (1 s); 5.18+ caps it at 120 s. */
	rule = bpf_map_lookup_elem(&rules, &key);
	if (rule) {
		rto_jiffies = rule->rto_jiffies;
		flags = rule->flags;
		count_hit(rule->hit_slot);
		syn_retries = rule->syn_retries;
	} else if (config_value->default_rto_jiffies > 0) {
		rto_jiffies = config_value->default_rto_jiffies;
		flags = config_value->default_flags;
		count_hit(DEFAULT_HIT_SLOT);
		syn_retries = config_value->default_syn_retries;
	} else {
		return SOCK_OPS_CONTINUE;
	}
	if (flags & RTO_AUTO) {
		/* A passive open asks once per request socket (5.18+ keeps req->timeout for the SYN-ACK
		 * retransmits): no record. connect() is asked first from tcp_connect_init() with nothing
		 * in flight, then after its first SYN retransmit with the SYN in flight: it keeps the
		 * answer its first retransmit recorded (count_syn_retransmit()). */
		if (direction == DIRECTION_OUTGOING && skops->packets_out) {
			conn_key_of(skops, &key, &conn);
			kept = bpf_map_lookup_elem(&auto_conn, &conn);
		}
		if (kept && kept->isn == skops->snd_una)
			rto_jiffies = kept->rto_jiffies;
		else
			rto_jiffies = learned_rto(config_value, key.addr, rto_jiffies);
	}
	skops->reply = rto_jiffies;
	/* The kernel asks again at every SYN retransmit (retransmits_timed_out()): what follows is
	 * done once, on connect()'s socket before its first retransmit. */
	if (direction != DIRECTION_OUTGOING || skops->total_retrans)
		return SOCK_OPS_CONTINUE;
	/* RETRANS_CB for this socket from now on, added to the flags other programs set. It stays on
	 * after the handshake (clearing it could take it from another program that asked for it): a
	 * data retransmit then runs this program to its first state check. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RETRANS_CB_FLAG);
	/* TCP_SYNCNT bounds the SYN retransmits, so that connect() gives up at the deadline the
	 * loader computed from this rule's RTO (on 6.5+ tcp_syn_linear_timeouts is added to it). */
	if (syn_retries > 0)
		bpf_setsockopt(skops, SOL_TCP, TCP_SYNCNT, &syn_retries, sizeof(syn_retries));
	return SOCK_OPS_CONTINUE;
}

char _license[] SEC("license") = "GPL";	/* GPL-compatible, as the collection is */
