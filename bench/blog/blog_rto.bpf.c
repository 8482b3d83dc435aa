// SPDX-License-Identifier: GPL-2.0
/* The hand-made program of the blog post this collection grew from, as the benchmark's reference:
 * every connection of the cgroup gets a 3 s initial RTO; no maps, no rules.
 *   clang -O2 -target bpf -DHZ=250 -c blog_rto.bpf.c -o blog_rto.bpf.o
 *   bpftool prog load blog_rto.bpf.o /sys/fs/bpf/blog_rto type sockops
 *   bpftool cgroup attach /sys/fs/cgroup/unified/<cgroup> sock_ops pinned /sys/fs/bpf/blog_rto
 */
#include <linux/bpf.h>

#ifndef HZ
#define HZ 250
#endif

__attribute__((section("sockops"), used))
int blog_rto(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_TIMEOUT_INIT)
		skops->reply = HZ * 3;
	return 1;
}

char _license[] __attribute__((section("license"), used)) = "GPL";
