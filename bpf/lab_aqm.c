// Random early drop for the lab's rate-limited links (tc clsact egress, direct-action).
//
// No RED/CoDel/PIE qdisc exists on our kernels, and a drop-tail TBF makes loss epochs
// land on whichever flow happens to send at the wrong moment (a phase effect: a sender
// that answers ACKs a few hundred microseconds later than the kernel is hit far less
// often). This program sits on the egress hook of the device whose root qdisc is the
// TBF and keeps a *virtual* copy of that queue: a token bucket of the TBF's rate and
// burst; frames let through take tokens, and what they take beyond the bucket is the
// backlog the TBF would hold. A frame is dropped with a probability that rises with the
// virtual backlog ("gentle" RED on the instantaneous queue):
//   backlog < min_th                0
//   min_th .. max_th                0 .. max_p, linearly
//   max_th .. 2 * max_th            max_p .. 1, linearly
//   above 2 * max_th                1
// Only IPv4/IPv6 frames are judged (ARP passes). Settings and counters share one hash
// entry per ifindex; updates race between CPUs at worst by one frame's bytes.

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

struct aqm_entry {
    __u64 rate;        // bytes per second the virtual queue drains (the TBF rate)
    __u64 min_th;      // bytes
    __u64 max_th;      // bytes
    __u64 max_p;       // probability at max_th, scaled to 2^32
    __u64 burst;       // bytes: the TBF's bucket
    __u64 level;       // burst - tokens + backlog: 0 = full bucket, burst + q = backlog q
    __u64 last_ns;
    __u64 passed;
    __u64 early_drops;
    __u64 forced_drops;
    __u64 max_backlog;
};

BPF_HASH(aqm, __u32, struct aqm_entry, 256);

int lab_aqm(struct __sk_buff *skb)
{
    __u32 key = skb->ifindex;
    struct aqm_entry *e = aqm.lookup(&key);
    if (!e || !e->rate)
        return TC_ACT_UNSPEC;
    if (skb->protocol != bpf_htons(ETH_P_IP) && skb->protocol != bpf_htons(ETH_P_IPV6))
        return TC_ACT_UNSPEC;

    __u64 now = bpf_ktime_get_ns();
    __u64 dt = now - e->last_ns;
    if (dt > 1000000000ULL)
        dt = 1000000000ULL;
    __u64 drained = dt * e->rate / 1000000000ULL;
    __u64 level = e->level > drained ? e->level - drained : 0;
    // keep the fractional drain: only advance the clock by what was accounted
    if (drained || e->level == 0)
        e->last_ns = now;
    e->level = level;
    __u64 q = level > e->burst ? level - e->burst : 0;

    __u64 p = 0;                       // scaled to 2^32
    __u64 minb = e->min_th, maxb = e->max_th;
    if (q >= 2 * maxb) {
        p = 1ULL << 32;
    } else if (q >= maxb && maxb) {
        p = e->max_p + ((1ULL << 32) - e->max_p) * (q - maxb) / maxb;
    } else if (q > minb && maxb > minb) {
        p = e->max_p * (q - minb) / (maxb - minb);
    }
    if (p) {
        __u64 r = bpf_get_prandom_u32();
        if (r < p) {
            if (p >= (1ULL << 32))
                __sync_fetch_and_add(&e->forced_drops, 1);
            else
                __sync_fetch_and_add(&e->early_drops, 1);
            return TC_ACT_SHOT;
        }
    }
    e->level = level + skb->len;
    if (q + skb->len > e->max_backlog)
        e->max_backlog = q + skb->len;
    __sync_fetch_and_add(&e->passed, 1);
    return TC_ACT_UNSPEC;
}
