/* Structures and constants shared by the XDP fast path and Python.
 *
 * mptcp_bpf/datapath/structs.py mirrors every struct and #define here;
 * tests/unit/test_structs.py parses this file and checks that both agree.
 * Keep one declaration per line: `type name;` or `type name[N];`.
 */
#ifndef MPTCP_COMMON_H
#define MPTCP_COMMON_H

/* Map sizes. */
#define MPB_MAX_SUBFLOWS 16384
#define MPB_MAX_LISTENERS 1024
#define MPB_MAX_DEVICES 16
#define MPB_MAX_QUEUES 16
#define MPB_XSKS_SIZE 256
#define MPB_SYSCTL_MAX 16
#define MPB_SYSCTL_STR_LEN 16
#define MPB_OWNERS_MAX 64

/* Metadata written in front of every redirected frame (bpf_xdp_adjust_meta). */
#define MPB_META_MAGIC 0x4d50

/* mpb_meta.flags */
#define MPB_F_OWNED 0x0001
#define MPB_F_MPTCP 0x0002
#define MPB_F_HAS_DSS 0x0004
#define MPB_F_HAS_MAPPING 0x0008
#define MPB_F_MAPPING_IN_SEGMENT 0x0010
#define MPB_F_CSUM_CHECKED 0x0020
#define MPB_F_CSUM_BAD 0x0040
#define MPB_F_LISTENER 0x0080
#define MPB_F_SUM_VALID 0x0100
#define MPB_F_IPV6 0x0200
#define MPB_F_DSS_CSUM 0x0400

/* MPTCP option subtypes (8684 §3, 6824 §3); mpb_meta.subtypes has bit (1 << subtype). */
#define MPB_ST_MP_CAPABLE 0
#define MPB_ST_MP_JOIN 1
#define MPB_ST_DSS 2
#define MPB_ST_ADD_ADDR 3
#define MPB_ST_REMOVE_ADDR 4
#define MPB_ST_MP_PRIO 5
#define MPB_ST_MP_FAIL 6
#define MPB_ST_MP_FASTCLOSE 7
#define MPB_ST_MP_TCPRST 8
#define MPB_ST_COUNT 9

/* Indexes into mpb_counters.v (one per-CPU array entry). */
#define MPB_C_FRAMES 0
#define MPB_C_NOT_IP 1
#define MPB_C_NOT_TCP 2
#define MPB_C_TCP 3
#define MPB_C_NOT_OWNED 4
#define MPB_C_OWNED 5
#define MPB_C_LISTENER_SYN 6
#define MPB_C_MPTCP 7
#define MPB_C_MALFORMED 8
#define MPB_C_FRAGMENT 9
#define MPB_C_CSUM_OK 10
#define MPB_C_CSUM_BAD 11
#define MPB_C_CSUM_UNCHECKED 12
#define MPB_C_REDIRECTED 13
#define MPB_C_NO_XSK 14
#define MPB_C_META_FAIL 15
#define MPB_C_PAYLOAD_TOO_LONG 16
#define MPB_C_SUBTYPE_BASE 20
#define MPB_C_SUBTYPE_UNKNOWN 29
#define MPB_C_OWNED_SUBTYPE_BASE 30
#define MPB_C_MAX 40

/* Slots of the `sysctl` map (u32 values); string values live in `sysctl_str`. */
#define MPB_SYS_ENABLED 0
#define MPB_SYS_CHECKSUM 1
#define MPB_SYS_SYN_RETRIES 2
#define MPB_SYS_VERSION 3
#define MPB_SYS_DEBUG 4
#define MPB_SYS_PATH_MANAGER 5
#define MPB_SYS_SCHEDULER 6
/* Network-namespace cookie (never reused, unlike the inode naming the directory). */
#define MPB_SYS_COOKIE_LO 13
#define MPB_SYS_COOKIE_HI 14
#define MPB_SYS_INIT 15
#define MPB_SYS_INIT_MAGIC 0x4d504253

/* Longest payload whose ones'-complement sum the fast path computes (jumbo frames). */
#define MPB_MAX_PAYLOAD 9216

struct mpb_meta {
	__u16 magic;
	__u16 flags;
	__u16 subtypes;
	__u16 csum;
	__u32 subflow_id;
	__u32 token;
	__u16 l3_off;
	__u16 l4_off;
	__u16 payload_off;
	__u16 payload_len;
	__u16 dss_off;
	__u16 reserved;
};

/* `subflows` key: the 4-tuple as received (saddr/sport = remote, daddr/dport = local).
 * Ports in network order; IPv4 addresses in the first 4 bytes, the rest zero. */
struct mpb_subflow_key {
	__u8 family;
	__u8 pad;
	__u16 sport;
	__u16 dport;
	__u16 pad2;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct mpb_subflow_val {
	__u32 subflow_id;
	__u32 token;
	__u32 flags;
};

/* `listeners` key: local address and port (network order); addr all zero = any. */
struct mpb_listener_key {
	__u8 family;
	__u8 pad;
	__u16 port;
	__u8 addr[16];
};

struct mpb_listener_val {
	__u32 id;
	__u32 flags;
};

struct mpb_subflow_stats {
	__u64 packets;
	__u64 bytes;
};

struct mpb_counters {
	__u64 v[MPB_C_MAX];
};

struct mpb_sysctl_str {
	char s[MPB_SYSCTL_STR_LEN];
};

#endif
