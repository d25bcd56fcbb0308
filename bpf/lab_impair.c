// Link impairments for the lab's hidden "wire" namespace (tc clsact ingress, direct-action).
//
// One program serves every device of the wire namespace; its settings live in the array
// map `cfg`, indexed by the ingress ifindex, so `mptcp-bpf lab link` changes them while
// traffic runs. Roles:
//   ROLE_IMPAIR  on the wire end of a path veth: down, loss, drop-subtype, strip-mptcp-syn,
//                corrupt, dup; then either TC_ACT_OK (the bridge forwards it) or, when the
//                direction has a delay, redirect to the direction's TAP (the delay line).
//   ROLE_RETURN  on a TAP: frames written back by the delay line go to out_ifindex egress
//                (through the rate qdisc there).
// Random choices use a per-entry xorshift64 state when a seed is set (repeatable on one
// CPU), else bpf_get_prandom_u32.

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#define ROLE_NONE 0
#define ROLE_IMPAIR 1
#define ROLE_RETURN 2

#define F_DOWN 1
#define F_DELAY 2
#define F_STRIP_SYN 4
#define F_SEEDED 8

#define MAX_IFINDEX 1024

// Keep a stack index provably inside the 64-byte option buffer (the compiler would drop a
// plain `& 63` it can prove redundant, the verifier cannot).
#define B63(x) ({ __u32 _v = (x); asm volatile("%0 &= 63" : "+r"(_v)); _v; })

struct impair_cfg {
    __u32 role;
    __u32 flags;
    __u32 loss;          // probabilities scaled to 2^32 - 1
    __u32 dup;
    __u32 corrupt;
    __u32 drop_subtypes; // bit n set: drop segments carrying MPTCP subtype n
    __u32 tap_ifindex;
    __u32 out_ifindex;
    __u64 rng;
};

// Per-CPU counters, same index as cfg (no atomics, no race with config updates).
struct impair_stats {
    __u64 seen;
    __u64 lost;
    __u64 duplicated;
    __u64 corrupted;
    __u64 stripped;
    __u64 subtype_drops;
    __u64 down_drops;
    __u64 delayed;
    __u64 returned;
};

BPF_ARRAY(cfg, struct impair_cfg, MAX_IFINDEX);
BPF_PERCPU_ARRAY(stats, struct impair_stats, MAX_IFINDEX);

static __always_inline __u32 rnd(struct impair_cfg *c)
{
    if (!(c->flags & F_SEEDED))
        return bpf_get_prandom_u32();
    __u64 x = c->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    return (__u32)(x >> 32);
}

static __always_inline int chance(struct impair_cfg *c, __u32 p)
{
    if (!p)
        return 0;
    if (p == 0xffffffff)
        return 1;
    return rnd(c) < p;
}

struct l4info {
    __u32 tcp_off;   // offset of the TCP header, 0 when not TCP
    __u32 doff;      // TCP header length in bytes
    __u32 pay_len;   // TCP payload length
    __u8 flags;      // TCP flags byte (offset 13)
};

static __always_inline int find_tcp(struct __sk_buff *skb, struct l4info *li)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    __u32 l3 = sizeof(*eth);
    __u32 l4, l3len;

    li->tcp_off = 0;
    if ((void *)(eth + 1) > end)
        return -1;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data + l3;
        if ((void *)(ip + 1) > end)
            return -1;
        if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x1fff)))
            return 0;
        l4 = l3 + ip->ihl * 4;
        l3len = bpf_ntohs(ip->tot_len);
        if (l3len < ip->ihl * 4)
            return -1;
        l3len -= ip->ihl * 4;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + l3;
        if ((void *)(ip6 + 1) > end)
            return -1;
        if (ip6->nexthdr != IPPROTO_TCP)
            return 0;
        l4 = l3 + sizeof(*ip6);
        l3len = bpf_ntohs(ip6->payload_len);
    } else {
        return 0;
    }
    __u8 hdr[14];
    if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
        return -1;
    __u32 doff = (hdr[12] >> 4) * 4;
    if (doff < 20 || doff > l3len)
        return -1;
    li->tcp_off = l4;
    li->doff = doff;
    li->pay_len = l3len - doff;
    li->flags = hdr[13];
    return 1;
}

// Walk the TCP options in opt[0..len); return the offset of the first MPTCP option whose
// subtype bit is in `mask`, or -1. Sets *found_len to that option's length.
static __always_inline int find_mptcp(__u8 *opt, __u32 len, __u32 mask, __u32 *found_len)
{
    __u32 i = 0;
    for (int n = 0; n < 40; n++) {
        i = B63(i);  // forget the exact offset so the verifier's states converge
        if (i >= len || i >= 40)
            break;
        __u8 kind = opt[B63(i)];
        if (kind == 0)
            break;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= len || i + 1 >= 40)
            break;
        __u8 olen = opt[B63(i + 1)];
        if (olen < 2 || i + olen > len)
            break;
        if (kind == 30 && olen >= 3 && i + 2 < 40) {
            __u32 sub = opt[B63(i + 2)] >> 4;
            if (mask & (1u << sub)) {
                *found_len = olen;
                return i;
            }
        }
        i += olen;
    }
    return -1;
}

static __always_inline int load_opts(struct __sk_buff *skb, struct l4info *li, __u8 *opt)
{
    __u32 olen = li->doff - 20;
    if (olen == 0 || olen > 40)
        return 0;
    // Load the whole options area with a constant size when the packet allows it, else
    // in the size it has (options are a multiple of 4 bytes).
    if (bpf_skb_load_bytes(skb, li->tcp_off + 20, opt, 40) == 0)
        return olen;
#pragma unroll
    for (int w = 9; w >= 1; w--) {
        if (olen == (__u32)w * 4) {
            if (bpf_skb_load_bytes(skb, li->tcp_off + 20, opt, w * 4) == 0)
                return olen;
            return 0;
        }
    }
    return 0;
}

// Replace the MPTCP option in a SYN by NOPs, fixing the TCP checksum word by word.
static __always_inline int strip_syn(struct __sk_buff *skb, struct l4info *li)
{
    __u8 opt[64] = {};
    __u32 olen = load_opts(skb, li, opt);
    __u32 mlen = 0;
    if (!olen)
        return 0;
    int at = find_mptcp(opt, olen, 0xffff, &mlen);
    if (at < 0)
        return 0;
    __u32 start = at & 63;
    __u32 stop = start + mlen;
    __u32 csum_off = li->tcp_off + 16;
    // Words of the options area are 2-byte aligned relative to the TCP header (20 is even).
#pragma unroll
    for (int w = 0; w < 20; w++) {
        __u32 b0 = w * 2, b1 = w * 2 + 1;
        if (b1 < start || b0 >= stop)
            continue;
        __u16 old = 0, new = 0;
        __u8 o0 = opt[b0], o1 = opt[b1];
        __u8 n0 = (b0 >= start && b0 < stop) ? 1 : o0;
        __u8 n1 = (b1 >= start && b1 < stop) ? 1 : o1;
        old = (__u16)o0 | ((__u16)o1 << 8);
        new = (__u16)n0 | ((__u16)n1 << 8);
        if (old == new)
            continue;
        __u8 nb[2] = {n0, n1};
        if (bpf_l4_csum_replace(skb, csum_off, old, new, 2) < 0)
            return -1;
        if (bpf_skb_store_bytes(skb, li->tcp_off + 20 + b0, nb, 2, 0) < 0)
            return -1;
    }
    return 1;
}

// Flip one payload byte (at a random offset) and fix the TCP checksum, so that only the MPTCP DSS
// checksum can notice.
static __always_inline int corrupt_payload(struct impair_cfg *c, struct __sk_buff *skb,
                                           struct l4info *li)
{
    __u32 total = li->doff + li->pay_len;        // relative to the TCP header
    __u32 rel = li->doff + (rnd(c) % li->pay_len);
    __u32 w = rel & ~1u;                          // checksum words start at even offsets
    __u32 size = (w + 2 <= total) ? 2 : 1;        // a trailing odd byte is its own word
    __u8 b[2] = {};
    if (size == 2) {
        if (bpf_skb_load_bytes(skb, li->tcp_off + w, b, 2) < 0)
            return -1;
    } else {
        if (bpf_skb_load_bytes(skb, li->tcp_off + w, b, 1) < 0)
            return -1;
    }
    __u16 old = (__u16)b[0] | ((__u16)b[1] << 8);
    b[0] ^= 0x5a;
    __u16 new = (__u16)b[0] | ((__u16)b[1] << 8);
    if (bpf_l4_csum_replace(skb, li->tcp_off + 16, old, new, 2) < 0)
        return -1;
    if (size == 2)
        return bpf_skb_store_bytes(skb, li->tcp_off + w, b, 2, 0) < 0 ? -1 : 1;
    return bpf_skb_store_bytes(skb, li->tcp_off + w, b, 1, 0) < 0 ? -1 : 1;
}

int lab_impair(struct __sk_buff *skb)
{
    __u32 key = skb->ifindex;
    struct impair_cfg *c = cfg.lookup(&key);
    struct impair_stats *st = stats.lookup(&key);
    if (!c || !st || c->role == ROLE_NONE)
        return TC_ACT_OK;

    if (c->role == ROLE_RETURN) {
        st->returned++;
        return bpf_redirect(c->out_ifindex, 0);
    }

    st->seen++;
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_OK;
    // ARP stays out of every choice, so neighbours resolve even on a one-way down link
    // (both-way down is carrier loss, see impair.py).
    if (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6))
        return TC_ACT_OK;
    if (c->flags & F_DOWN) {
        st->down_drops++;
        return TC_ACT_SHOT;
    }

    if (chance(c, c->loss)) {
        st->lost++;
        return TC_ACT_SHOT;
    }

    struct l4info li = {};
    int is_tcp = find_tcp(skb, &li);
    if (is_tcp > 0) {
        if (c->drop_subtypes) {
            __u8 opt[64] = {};
            __u32 olen = load_opts(skb, &li, opt);
            __u32 mlen = 0;
            if (olen && find_mptcp(opt, olen, c->drop_subtypes, &mlen) >= 0) {
                st->subtype_drops++;
                return TC_ACT_SHOT;
            }
        }
        if ((c->flags & F_STRIP_SYN) && (li.flags & 0x02)) {
            int r = strip_syn(skb, &li);
            if (r > 0)
                st->stripped++;
            else if (r < 0)
                return TC_ACT_SHOT;
        }
        if (c->corrupt && li.pay_len && chance(c, c->corrupt)) {
            int r = corrupt_payload(c, skb, &li);
            if (r > 0)
                st->corrupted++;
            else if (r < 0)
                return TC_ACT_SHOT;
        }
    }

    if (c->dup && chance(c, c->dup)) {
        __u32 to = (c->flags & F_DELAY) ? c->tap_ifindex : c->out_ifindex;
        if (bpf_clone_redirect(skb, to, 0) == 0)
            st->duplicated++;
    }
    if (c->flags & F_DELAY) {
        st->delayed++;
        return bpf_redirect(c->tap_ifindex, 0);
    }
    return TC_ACT_OK;
}
