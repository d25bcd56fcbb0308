/* mptcp-bpf ingress fast path (XDP): clang -target bpf, loaded with libbpf (loader.py).
 *
 * Parses Ethernet (one VLAN tag), IPv4 (options) / IPv6 (extension headers), TCP and its
 * options; counts MPTCP subtypes; looks the 4-tuple up in `subflows` (and a SYN's
 * destination in `listeners`).  Segments the stack owns get the payload's ones'-complement
 * sum, the DSS checksum check when the mapping lies in the segment (8684 §3.3.1), a
 * struct mpb_meta in front of the frame and are redirected to the AF_XDP socket of their
 * device and queue.  Everything else: XDP_PASS, untouched.
 *
 * The object is the same for every namespace: before loading, the loader points `sysctl`
 * at the namespace's pinned map (bpf_map__reuse_fd), so one compiled object serves all.
 */
#include "mpb_bpf.h"
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include "mptcp_common.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define MPB_VF_PASS_NO_XSK 0x1   /* subflow/listener flag: no XSK -> XDP_PASS, not drop */
#define MAX_EXT_HDRS 6
#define MAX_L4_OFF 512
#define TCPOPT_MPTCP 30

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MPB_MAX_SUBFLOWS);
	__type(key, struct mpb_subflow_key);
	__type(value, struct mpb_subflow_val);
} subflows SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MPB_MAX_LISTENERS);
	__type(key, struct mpb_listener_key);
	__type(value, struct mpb_listener_val);
} listeners SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MPB_XSKS_SIZE);
	__type(key, u32);
	__type(value, u32);
} xsks SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MPB_MAX_DEVICES);
	__type(key, u32);
	__type(value, u32);
} devices SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct mpb_counters);
} counters SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MPB_MAX_SUBFLOWS);
	__type(key, u32);
	__type(value, struct mpb_subflow_stats);
} subflow_stats SEC(".maps");
/* Replaced by the namespace's pinned `sysctl` before loading (shared with the CLI). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MPB_SYSCTL_MAX);
	__type(key, u32);
	__type(value, u32);
} sysctl SEC(".maps");

/* Per-CPU scratch.  Values that differ between parse paths (header offsets, the option
 * loop's cursor and findings) go through it: a value loaded from a map is unknown to the
 * verifier, so every path reaches the next stage in the same state and is pruned there.
 * Without it the verifier walks every combination and gives up at 1M instructions. */
struct mpb_scratch {
	u32 l4;
	u32 end;
	u32 nh;
	u32 opt;
	u32 mask;
	u32 dss_off;
	u32 dss_len;
	u32 unknown;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct mpb_scratch);
} scratch SEC(".maps");
/* A volatile load: the compiler may not reuse the value it stored. */
#define SC(f) (*(volatile u32 *)&sc->f)

static __always_inline u32 fold32(u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (u32)s;
}

/* Folded ones'-complement sum of the payload [off, off+len) in big-endian word order,
 * copied 256 bytes at a time to the stack (bpf_xdp_load_bytes: no packet-range proofs
 * for variable offsets) and summed by bpf_csum_diff.  -1 if the range is not in the frame. */
static __always_inline int payload_sum(struct xdp_md *ctx, u32 off, u32 len)
{
	u8 buf[256];
	u64 s = 0;

	if (off > 0x3fff || len > MPB_MAX_PAYLOAD)
		return -1;
	for (int i = 0; i < MPB_MAX_PAYLOAD / 256; i++) {
		if (len < 256)
			break;
		if (bpf_xdp_load_bytes(ctx, off, buf, 256))
			return -1;
		s = fold32(s + (u32)bpf_csum_diff(0, 0, (void *)buf, 256, 0));
		off += 256;
		len -= 256;
		if (off > 0x3fff || len > 256 * (MPB_MAX_PAYLOAD / 256))
			return -1;
	}
	len &= 255;
	if (len) {
		__builtin_memset(buf, 0, sizeof(buf));
		if (bpf_xdp_load_bytes(ctx, off, buf, len))
			return -1;
		u32 n = (len + 3) & 0x1fc;   /* zero padding: an odd last byte is a high byte */
		if (n > 256)
			return -1;
		s = fold32(s + (u32)bpf_csum_diff(0, 0, (void *)buf, n, 0));
	}
	s = fold32(s);
	return (int)(((s & 0xff) << 8) | (s >> 8));  /* memory order -> big-endian order */
}

static __always_inline void owned_count(struct mpb_counters *c, u16 mask)
{
#pragma unroll
	for (int i = 0; i < MPB_ST_COUNT; i++)
		if (mask & (1 << i))
			c->v[MPB_C_OWNED_SUBTYPE_BASE + i]++;
}

SEC("xdp")
int xdp_main(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	u32 zero = 0;
	struct mpb_counters *c = bpf_map_lookup_elem(&counters, &zero);
	struct mpb_scratch *sc = bpf_map_lookup_elem(&scratch, &zero);

	if (!c || !sc)
		return XDP_PASS;
	c->v[MPB_C_FRAMES]++;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		c->v[MPB_C_NOT_IP]++;
		return XDP_PASS;
	}
	u16 proto = eth->h_proto;
	u32 l3 = sizeof(*eth);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		u8 *v = data + l3;
		if ((void *)(v + 4) > data_end) {
			c->v[MPB_C_MALFORMED]++;
			return XDP_PASS;
		}
		proto = *(u16 *)(v + 2);
		l3 += 4;
	}

	struct mpb_subflow_key key;
	__builtin_memset(&key, 0, sizeof(key));
	u16 mflags = 0;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l3;
		if ((void *)(ip + 1) > data_end) {
			c->v[MPB_C_MALFORMED]++;
			return XDP_PASS;
		}
		u32 ihl = ip->ihl * 4;
		u32 tot = bpf_ntohs(ip->tot_len);
		if (ihl < 20 || tot < ihl) {
			c->v[MPB_C_MALFORMED]++;
			return XDP_PASS;
		}
		if (ip->protocol != IPPROTO_TCP) {
			c->v[MPB_C_NOT_TCP]++;
			return XDP_PASS;
		}
		if (ip->frag_off & bpf_htons(0x3fff)) {
			c->v[MPB_C_FRAGMENT]++;
			return XDP_PASS;
		}
		key.family = AF_INET;
		__builtin_memcpy(key.saddr, &ip->saddr, 4);
		__builtin_memcpy(key.daddr, &ip->daddr, 4);
		SC(l4) = l3 + ihl;
		SC(end) = l3 + tot;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l3;
		if ((void *)(ip6 + 1) > data_end) {
			c->v[MPB_C_MALFORMED]++;
			return XDP_PASS;
		}
		key.family = AF_INET6;
		__builtin_memcpy(key.saddr, &ip6->saddr, 16);
		__builtin_memcpy(key.daddr, &ip6->daddr, 16);
		mflags |= MPB_F_IPV6;
		SC(nh) = ip6->nexthdr;
		SC(l4) = l3 + sizeof(*ip6);
		SC(end) = l3 + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		/* Extension headers (RFC 8200 §4), a bounded number of them. */
		for (int i = 0; i < MAX_EXT_HDRS; i++) {
			u32 nh = SC(nh);
			u32 x4 = SC(l4);
			if (nh == IPPROTO_TCP)
				break;
			if (x4 > MAX_L4_OFF) {
				c->v[MPB_C_MALFORMED]++;
				return XDP_PASS;
			}
			u8 *x = data + x4;
			if ((void *)(x + 8) > data_end) {
				c->v[MPB_C_MALFORMED]++;
				return XDP_PASS;
			}
			if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS) {
				SC(l4) = x4 + ((u32)x[1] + 1) * 8;
			} else if (nh == IPPROTO_FRAGMENT) {
				/* offset != 0 or more fragments: not a whole segment */
				if (((x[2] << 8) | x[3]) & 0xfff9) {
					c->v[MPB_C_FRAGMENT]++;
					return XDP_PASS;
				}
				SC(l4) = x4 + 8;
			} else if (nh == IPPROTO_AH) {
				SC(l4) = x4 + ((u32)x[1] + 2) * 4;
			} else {
				c->v[MPB_C_NOT_TCP]++;
				return XDP_PASS;
			}
			SC(nh) = x[0];
		}
		if (SC(nh) != IPPROTO_TCP) {
			c->v[MPB_C_NOT_TCP]++;
			return XDP_PASS;
		}
	} else {
		c->v[MPB_C_NOT_IP]++;
		return XDP_PASS;
	}

	u32 l4 = SC(l4);
	u32 end = SC(end);
	if (l4 > MAX_L4_OFF || end > (u32)(data_end - data) || end < l4 + 20 || end > 0xffff) {
		c->v[MPB_C_MALFORMED]++;
		return XDP_PASS;
	}
	struct tcphdr *th = data + l4;
	if ((void *)(th + 1) > data_end) {
		c->v[MPB_C_MALFORMED]++;
		return XDP_PASS;
	}
	c->v[MPB_C_TCP]++;
	u32 doff = th->doff * 4;
	if (doff < 20 || l4 + doff > end) {
		c->v[MPB_C_MALFORMED]++;
		return XDP_PASS;
	}
	key.sport = th->source;
	key.dport = th->dest;
	u8 syn = th->syn, ack = th->ack;

	/* Bounded TCP option loop: at most 40 bytes, each option at least one byte.  The
	 * cursor and the findings live in scratch so every iteration looks alike. */
	SC(opt) = 20;
	SC(mask) = 0;
	SC(dss_off) = 0;
	SC(dss_len) = 0;
	for (int i = 0; i < 40; i++) {
		u32 opt = SC(opt);
		if (opt >= doff || opt > 60)
			break;
		u8 *p = data + l4 + opt;
		if ((void *)(p + 1) > data_end)
			break;
		u8 kind = p[0];
		if (kind == 0)
			break;
		if (kind == 1) {
			SC(opt) = opt + 1;
			continue;
		}
		if ((void *)(p + 3) > data_end) {
			c->v[MPB_C_MALFORMED]++;
			return XDP_PASS;
		}
		u32 olen = p[1];
		if (olen < 2 || opt + olen > doff) {
			c->v[MPB_C_MALFORMED]++;
			return XDP_PASS;
		}
		if (kind == TCPOPT_MPTCP && olen >= 3) {
			u32 st = p[2] >> 4;
			if (st < MPB_ST_COUNT)
				SC(mask) |= 1 << st;
			else
				c->v[MPB_C_SUBTYPE_UNKNOWN]++;
			if (st == MPB_ST_DSS && !SC(dss_off)) {
				SC(dss_off) = l4 + opt;
				SC(dss_len) = olen;
			}
		}
		SC(opt) = opt + olen;
	}
	u32 mask = SC(mask) & 0x1ff;
	if (mask) {
		c->v[MPB_C_MPTCP]++;
		mflags |= MPB_F_MPTCP;
#pragma unroll
		for (int i = 0; i < MPB_ST_COUNT; i++)
			if (mask & (1 << i))
				c->v[MPB_C_SUBTYPE_BASE + i]++;
	}

	/* Owned? The 4-tuple, else a SYN to a listener (exact address, then any). */
	u32 sf_id = 0, token = 0, vflags = 0;
	struct mpb_subflow_val *sv = bpf_map_lookup_elem(&subflows, &key);
	if (sv) {
		sf_id = sv->subflow_id;
		token = sv->token;
		vflags = sv->flags;
	} else if (syn && !ack) {
		struct mpb_listener_key lk;
		__builtin_memset(&lk, 0, sizeof(lk));
		lk.family = key.family;
		lk.port = key.dport;
		__builtin_memcpy(lk.addr, key.daddr, 16);
		struct mpb_listener_val *lv = bpf_map_lookup_elem(&listeners, &lk);
		if (!lv) {
			__builtin_memset(lk.addr, 0, 16);
			lv = bpf_map_lookup_elem(&listeners, &lk);
		}
		if (!lv) {
			c->v[MPB_C_NOT_OWNED]++;
			return XDP_PASS;
		}
		vflags = lv->flags;
		mflags |= MPB_F_LISTENER;
		c->v[MPB_C_LISTENER_SYN]++;
	} else {
		c->v[MPB_C_NOT_OWNED]++;
		return XDP_PASS;
	}
	c->v[MPB_C_OWNED]++;
	mflags |= MPB_F_OWNED;
	owned_count(c, mask);

	u32 poff = l4 + doff;
	u32 plen = end - poff;
	u32 sum = 0;
	if (plen > MPB_MAX_PAYLOAD) {
		c->v[MPB_C_PAYLOAD_TOO_LONG]++;
	} else {
		int r = payload_sum(ctx, poff, plen);
		if (r >= 0) {
			sum = r;
			mflags |= MPB_F_SUM_VALID;
		}
	}

	/* DSS (8684 §3.3): kind, len, subtype, flags [F m M a A], data ACK, mapping. */
	u32 dss_off = SC(dss_off);
	u32 dss_len = SC(dss_len);
	if (dss_off && dss_len >= 4 && dss_len <= 28) {
		u8 d[32];
		__builtin_memset(d, 0, sizeof(d));
		if (bpf_xdp_load_bytes(ctx, dss_off, d, dss_len))
			goto meta;
		u8 f = d[3];
		u32 ackl = (f & 0x01) ? ((f & 0x02) ? 8 : 4) : 0;
		mflags |= MPB_F_HAS_DSS;
		if (!(f & 0x04))
			goto meta;
		mflags |= MPB_F_HAS_MAPPING;
		u32 dsnl = (f & 0x08) ? 8 : 4;
		u32 mapl = 4 + ackl + dsnl + 4 + 2;
		u32 has_csum = dss_len == mapl + 2;
		if (dss_len != mapl && !has_csum) {
			c->v[MPB_C_MALFORMED]++;
			goto meta;
		}
		u32 m = (4 + ackl) & 15;               /* offset of the mapping: 4, 8 or 12 */
		u32 lo = (m + dsnl + 4) & 31;           /* data-level length */
		u32 dlen = (u32)d[lo] << 8 | d[(lo + 1) & 31];
		if (dlen != 0 && (dlen == plen || ((f & 0x10) && dlen == plen + 1)))
			mflags |= MPB_F_MAPPING_IN_SEGMENT;
		if (has_csum)
			mflags |= MPB_F_DSS_CSUM;
		/* Only a 64-bit DSN gives the pseudo-header without connection state. */
		if (has_csum && dsnl == 8 && (mflags & MPB_F_MAPPING_IN_SEGMENT) &&
		    (mflags & MPB_F_SUM_VALID)) {
			/* DSN(8) SSN(4) len(2) csum(2): the pseudo-header with the checksum in place */
			u64 s = sum;
#pragma unroll
			for (int k = 0; k < 16; k += 2)
				s += (u32)d[(m + k) & 31] << 8 | d[(m + k + 1) & 31];
			mflags |= MPB_F_CSUM_CHECKED;
			if (fold32(s) != 0xffff) {
				mflags |= MPB_F_CSUM_BAD;
				c->v[MPB_C_CSUM_BAD]++;
			} else {
				c->v[MPB_C_CSUM_OK]++;
			}
		} else if (has_csum) {
			c->v[MPB_C_CSUM_UNCHECKED]++;
		}
	}
meta:
	if (sf_id) {
		struct mpb_subflow_stats *st = bpf_map_lookup_elem(&subflow_stats, &sf_id);
		if (st) {
			st->packets++;
			st->bytes += plen;
		} else {
			struct mpb_subflow_stats ns = {1, plen};
			bpf_map_update_elem(&subflow_stats, &sf_id, &ns, BPF_NOEXIST);
		}
	}
	u32 dbg_key = MPB_SYS_DEBUG;
	u32 *dbg = bpf_map_lookup_elem(&sysctl, &dbg_key);
	if (dbg && *dbg >= 2)
	{
		static const char fmt[] = "mpb: sf=%u subtypes=%x len=%u\n";
		bpf_trace_printk(fmt, sizeof(fmt), sf_id, mask, plen);
	}

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct mpb_meta))) {
		c->v[MPB_C_META_FAIL]++;
	} else {
		void *meta_p = (void *)(long)ctx->data_meta;
		void *dp = (void *)(long)ctx->data;
		struct mpb_meta *mt = meta_p;
		if ((void *)(mt + 1) <= dp) {
			mt->magic = MPB_META_MAGIC;
			mt->flags = mflags;
			mt->subtypes = mask;
			mt->csum = sum;
			mt->subflow_id = sf_id;
			mt->token = token;
			mt->l3_off = l3;
			mt->l4_off = l4;
			mt->payload_off = poff;
			mt->payload_len = plen;
			mt->dss_off = dss_off;
			mt->reserved = 0;
		}
	}

	u32 ifindex = ctx->ingress_ifindex;
	u32 *slot = bpf_map_lookup_elem(&devices, &ifindex);
	u32 q = ctx->rx_queue_index;
	if (slot && *slot < MPB_MAX_DEVICES && q < MPB_MAX_QUEUES) {
		u32 xk = *slot * MPB_MAX_QUEUES + q;
		int r = bpf_redirect_map(&xsks, xk, 0);
		if (r == XDP_REDIRECT) {
			c->v[MPB_C_REDIRECTED]++;
			return r;
		}
	}
	c->v[MPB_C_NO_XSK]++;
	return (vflags & MPB_VF_PASS_NO_XSK) ? XDP_PASS : XDP_DROP;
}

char _license[] SEC("license") = "GPL";   /* bpf_trace_printk is GPL-only */
