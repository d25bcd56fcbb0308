// SPDX-License-Identifier: GPL-2.0
/* TCP Vegas as a BPF struct_ops congestion control, for the lab's delay-based competitor.
 *
 * Why: this kernel is built without tcp_vegas (and without modules), and wVegas must be
 * measured against its own kind: a delay-based TCP flow. Registered and removed by
 * mptcp_bpf/lab/bpf_cc.py (`bpftool struct_ops register`); compiled at run time against
 * a vmlinux.h generated from /sys/kernel/btf/vmlinux.
 *
 * The algorithm follows Brakmo & Peterson (1995) in the form Linux's tcp_vegas gives it:
 * once per RTT (when the ACK passes the snd_nxt of the round's start), with the smallest
 * RTT sample of the round (filters delayed ACKs) and the smallest ever as base RTT:
 *   diff = cwnd * (rtt - base) / rtt        packets of this flow queued (Brakmo-Peterson's
 *                                           (Expected - Actual) * BaseRTT; Linux divides
 *                                           by base instead, which counts a few more)
 *   slow start: leave it when diff > gamma, cwnd = min(cwnd, cwnd * base / rtt + 1)
 *   otherwise:  diff > beta: cwnd - 1;  diff < alpha: cwnd + 1
 * Fewer than 3 samples in a round, or outside the Open state: Reno. Loss: Reno halving.
 * alpha, beta, gamma and the names are compile-time constants (-D), so one object per
 * setting; the lab helper chooses them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#ifndef VEGAS_ALPHA
#define VEGAS_ALPHA 2
#endif
#ifndef VEGAS_BETA
#define VEGAS_BETA 4
#endif
#ifndef VEGAS_GAMMA
#define VEGAS_GAMMA 1
#endif
#ifndef VEGAS_NAME
#define VEGAS_NAME bpf_vegas
#endif
#define STR_(x) #x
#define STR(x) STR_(x)

char _license[] SEC("license") = "GPL";

extern void tcp_reno_cong_avoid(struct sock *sk, __u32 ack, __u32 acked) __ksym;
extern __u32 tcp_reno_ssthresh(struct sock *sk) __ksym;
extern __u32 tcp_reno_undo_cwnd(struct sock *sk) __ksym;
extern __u32 tcp_slow_start(struct tcp_sock *tp, __u32 acked) __ksym;

struct vegas {
	__u32 beg_snd_nxt;	/* right edge of the round */
	__u32 base_rtt;		/* smallest RTT ever seen, us */
	__u32 min_rtt;		/* smallest RTT of this round, us */
	__u32 cnt_rtt;		/* samples in this round */
	__u32 doing_vegas;	/* Open state: per-RTT Vegas updates */
};

static __always_inline struct tcp_sock *tp_of(struct sock *sk)
{
	return (struct tcp_sock *)sk;
}

static __always_inline struct vegas *ca_of(struct sock *sk)
{
	return (struct vegas *)((struct inet_connection_sock *)sk)->icsk_ca_priv;
}

static __always_inline int seq_after(__u32 a, __u32 b)
{
	return (__s32)(b - a) < 0;
}

static __always_inline void vegas_enable(struct sock *sk)
{
	struct vegas *ca = ca_of(sk);

	ca->doing_vegas = 1;
	ca->beg_snd_nxt = tp_of(sk)->snd_nxt;
	ca->cnt_rtt = 0;
	ca->min_rtt = 0x7fffffff;
}

SEC("struct_ops/vegas_init")
void BPF_PROG(vegas_init, struct sock *sk)
{
	ca_of(sk)->base_rtt = 0x7fffffff;
	vegas_enable(sk);
}

SEC("struct_ops/vegas_pkts_acked")
void BPF_PROG(vegas_pkts_acked, struct sock *sk, const struct ack_sample *sample)
{
	struct vegas *ca = ca_of(sk);
	__s32 rtt_us = sample->rtt_us;
	__u32 vrtt;

	if (rtt_us < 0)
		return;
	vrtt = (__u32)rtt_us + 1;	/* never zero */
	if (vrtt < ca->base_rtt)
		ca->base_rtt = vrtt;
	if (vrtt < ca->min_rtt)
		ca->min_rtt = vrtt;
	ca->cnt_rtt++;
}

SEC("struct_ops/vegas_state")
void BPF_PROG(vegas_state, struct sock *sk, __u8 new_state)
{
	if (new_state == TCP_CA_Open)
		vegas_enable(sk);
	else
		ca_of(sk)->doing_vegas = 0;
}

SEC("struct_ops/vegas_cwnd_event")
void BPF_PROG(vegas_cwnd_event, struct sock *sk, enum tcp_ca_event ev)
{
	/* restart after idle: the saved state is stale (tcp_vegas) */
	if (ev == CA_EVENT_CWND_RESTART || ev == CA_EVENT_TX_START) {
		ca_of(sk)->base_rtt = 0x7fffffff;
		vegas_enable(sk);
	}
}

SEC("struct_ops/vegas_cong_avoid")
void BPF_PROG(vegas_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	struct tcp_sock *tp = tp_of(sk);
	struct vegas *ca = ca_of(sk);
	__u32 cwnd, rtt, base, diff, target, clamp;

	if (!ca->doing_vegas) {
		tcp_reno_cong_avoid(sk, ack, acked);
		return;
	}
	if (!seq_after(ack, ca->beg_snd_nxt)) {
		if (tp->snd_cwnd < tp->snd_ssthresh)
			tcp_slow_start(tp, acked);
		return;
	}
	/* once per RTT */
	ca->beg_snd_nxt = tp->snd_nxt;
	if (ca->cnt_rtt <= 2) {
		tcp_reno_cong_avoid(sk, ack, acked);
	} else {
		cwnd = tp->snd_cwnd;
		rtt = ca->min_rtt;
		base = ca->base_rtt;
		if (rtt < base)
			rtt = base;
		target = (__u32)(((__u64)cwnd * base) / rtt);
		diff = cwnd - target;	/* cwnd * (rtt - base) / rtt, rounded up */
		if (diff > VEGAS_GAMMA && tp->snd_cwnd < tp->snd_ssthresh) {
			if (target + 1 < cwnd)
				tp->snd_cwnd = target + 1;
			if (tp->snd_cwnd < tp->snd_ssthresh)
				tp->snd_ssthresh = tp->snd_cwnd;
		} else if (tp->snd_cwnd < tp->snd_ssthresh) {
			tcp_slow_start(tp, acked);
		} else if (diff > VEGAS_BETA) {
			tp->snd_cwnd = cwnd - 1;
			if (tp->snd_cwnd < tp->snd_ssthresh)
				tp->snd_ssthresh = tp->snd_cwnd;
		} else if (diff < VEGAS_ALPHA) {
			tp->snd_cwnd = cwnd + 1;
		}
		clamp = tp->snd_cwnd_clamp;
		if (tp->snd_cwnd < 2)
			tp->snd_cwnd = 2;
		else if (tp->snd_cwnd > clamp)
			tp->snd_cwnd = clamp;
		/* tcp_current_ssthresh in the Open state */
		cwnd = (tp->snd_cwnd >> 1) + (tp->snd_cwnd >> 2);
		if (tp->snd_ssthresh < cwnd)
			tp->snd_ssthresh = cwnd;
	}
	ca->cnt_rtt = 0;
	ca->min_rtt = 0x7fffffff;
}

SEC("struct_ops/vegas_ssthresh")
__u32 BPF_PROG(vegas_ssthresh, struct sock *sk)
{
	return tcp_reno_ssthresh(sk);
}

SEC("struct_ops/vegas_undo_cwnd")
__u32 BPF_PROG(vegas_undo_cwnd, struct sock *sk)
{
	return tcp_reno_undo_cwnd(sk);
}

SEC(".struct_ops")
struct tcp_congestion_ops VEGAS_NAME = {
	.init		= (void *)vegas_init,
	.ssthresh	= (void *)vegas_ssthresh,
	.undo_cwnd	= (void *)vegas_undo_cwnd,
	.cong_avoid	= (void *)vegas_cong_avoid,
	.pkts_acked	= (void *)vegas_pkts_acked,
	.set_state	= (void *)vegas_state,
	.cwnd_event	= (void *)vegas_cwnd_event,
	.name		= STR(VEGAS_NAME),
};
