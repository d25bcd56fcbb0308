"""Socket-option layouts: pack/unpack round trips, the fork's errors, and gcc's opinion."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess

import pytest

from mptcp_bpf import sockopt as so

C_STRUCTS = r"""
#include <stdio.h>
#include <stddef.h>
#include <netinet/in.h>
#include <linux/types.h>
#include <linux/tcp.h>

struct mptcp_sub_status {
    __u8 id;
    __u16 slave_sk:1, fully_established:1, attached:1, low_prio:1, pre_established:1;
};
struct mptcp_sub_ids { __u8 sub_count; struct mptcp_sub_status sub_status[]; };
struct mptcp_sub_tuple { __u8 id; __u8 addrs[0]; };
struct mptcp_close_sub_id { __u8 id; };
struct mptcp_sub_getsockopt {
    __u8 id; int level; int optname; char *optval; unsigned int *optlen;
};
struct mptcp_sub_setsockopt {
    __u8 id; int level; int optname; char *optval; unsigned int optlen;
};
struct mptcp_meta_info {
    __u8 mptcpi_state; __u8 mptcpi_retransmits; __u8 mptcpi_probes; __u8 mptcpi_backoff;
    __u32 mptcpi_rto; __u32 mptcpi_unacked; __u32 mptcpi_last_data_sent;
    __u32 mptcpi_last_data_recv; __u32 mptcpi_last_ack_recv; __u32 mptcpi_total_retrans;
    __u64 mptcpi_bytes_acked; __u64 mptcpi_bytes_received;
};
struct mptcp_sub_info {
    union { struct sockaddr src; struct sockaddr_in src_v4; struct sockaddr_in6 src_v6; };
    union { struct sockaddr dst; struct sockaddr_in dst_v4; struct sockaddr_in6 dst_v6; };
};
struct mptcp_info {
    __u32 tcp_info_len; __u32 sub_len; __u32 meta_len; __u32 sub_info_len;
    __u32 total_sub_info_len;
    struct mptcp_meta_info *meta_info; struct tcp_info *initial; struct tcp_info *subflows;
    struct mptcp_sub_info *subflow_info;
};
/* Linux 6.18 additions after tcpi_snd_wnd (the build host's header may be older). */
struct tcp_info_618 {
    struct tcp_info base_upto_snd_wnd;
};
struct tail_618 {
    __u32 tcpi_rcv_wnd; __u32 tcpi_rehash; __u16 tcpi_total_rto;
    __u16 tcpi_total_rto_recoveries; __u32 tcpi_total_rto_time; __u32 tcpi_received_ce;
    __u32 tcpi_delivered_e1_bytes; __u32 tcpi_delivered_e0_bytes;
    __u32 tcpi_delivered_ce_bytes; __u32 tcpi_received_e1_bytes;
    __u32 tcpi_received_e0_bytes; __u32 tcpi_received_ce_bytes;
    __u32 tcpi_ecn_mode:2, tcpi_accecn_opt_seen:2, tcpi_accecn_fail_mode:4, tcpi_options2:24;
};
#define P(name, val) printf("%s %lu\n", name, (unsigned long)(val))
#define O(s, f) P(#s "." #f, offsetof(struct s, f))
int main(void) {
    struct mptcp_sub_status st = {0};
    st.id = 7; st.slave_sk = 1; st.low_prio = 1; st.pre_established = 1;
    P("status_byte1", ((unsigned char *)&st)[1]);
    P("sizeof.mptcp_sub_status", sizeof(struct mptcp_sub_status));
    P("sizeof.mptcp_sub_ids", sizeof(struct mptcp_sub_ids));
    O(mptcp_sub_ids, sub_status);
    O(mptcp_sub_tuple, addrs);
    P("sizeof.mptcp_close_sub_id", sizeof(struct mptcp_close_sub_id));
    P("sizeof.sockaddr_in", sizeof(struct sockaddr_in));
    P("sizeof.sockaddr_in6", sizeof(struct sockaddr_in6));
    P("sizeof.mptcp_sub_getsockopt", sizeof(struct mptcp_sub_getsockopt));
    P("sizeof.mptcp_sub_setsockopt", sizeof(struct mptcp_sub_setsockopt));
    O(mptcp_sub_getsockopt, level); O(mptcp_sub_getsockopt, optname);
    O(mptcp_sub_getsockopt, optval); O(mptcp_sub_getsockopt, optlen);
    O(mptcp_sub_setsockopt, level); O(mptcp_sub_setsockopt, optname);
    O(mptcp_sub_setsockopt, optval); O(mptcp_sub_setsockopt, optlen);
    P("sizeof.tail_618", sizeof(struct tail_618));
    P("sizeof.mptcp_info", sizeof(struct mptcp_info));
    O(mptcp_info, total_sub_info_len); O(mptcp_info, meta_info); O(mptcp_info, initial);
    O(mptcp_info, subflows); O(mptcp_info, subflow_info);
    P("sizeof.mptcp_meta_info", sizeof(struct mptcp_meta_info));
    O(mptcp_meta_info, mptcpi_rto); O(mptcp_meta_info, mptcpi_total_retrans);
    O(mptcp_meta_info, mptcpi_bytes_acked); O(mptcp_meta_info, mptcpi_bytes_received);
    P("sizeof.mptcp_sub_info", sizeof(struct mptcp_sub_info));
    O(mptcp_sub_info, dst);
    TCP_FIELDS
    TAIL_FIELDS
    P("sizeof.tcp_info_sys", sizeof(struct tcp_info));
    return 0;
}
"""

SYS_TCP_INFO_FIELDS = [
    "state", "ca_state", "retransmits", "probes", "backoff", "options",
    "rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans", "fackets",
    "last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv", "pmtu",
    "rcv_ssthresh", "rtt", "rttvar", "snd_ssthresh", "snd_cwnd", "advmss", "reordering",
    "rcv_rtt", "rcv_space", "total_retrans", "pacing_rate", "max_pacing_rate",
    "bytes_acked", "bytes_received", "segs_out", "segs_in", "notsent_bytes", "min_rtt",
    "data_segs_in", "data_segs_out", "delivery_rate", "busy_time", "rwnd_limited",
    "sndbuf_limited", "delivered", "delivered_ce", "bytes_sent", "bytes_retrans",
    "dsack_dups", "reord_seen", "rcv_ooopack", "snd_wnd",
]
TAIL_FIELDS = ["rcv_wnd", "rehash", "total_rto", "total_rto_recoveries", "total_rto_time",
               "received_ce", "delivered_e1_bytes", "delivered_e0_bytes",
               "delivered_ce_bytes", "received_e1_bytes", "received_e0_bytes",
               "received_ce_bytes"]


@pytest.fixture(scope="module")
def gcc_layout(tmp_path_factory):
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("gcc is not installed: cannot compare layouts with C")
    tmp = tmp_path_factory.mktemp("layout")
    src = C_STRUCTS.replace("TCP_FIELDS", " ".join(
        f'P("tcp_info.{f}", offsetof(struct tcp_info, tcpi_{f}));' for f in SYS_TCP_INFO_FIELDS
    )).replace("TAIL_FIELDS", " ".join(
        f'P("tail.{f}", offsetof(struct tail_618, tcpi_{f}));' for f in TAIL_FIELDS))
    (tmp / "layout.c").write_text(src)
    build = subprocess.run([gcc, "-O0", "-o", str(tmp / "layout"), str(tmp / "layout.c")],
                           capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        pytest.skip(f"cannot compile the layout probe: {build.stderr[-500:]}")
    out = subprocess.run([str(tmp / "layout")], capture_output=True, text=True, timeout=30)
    return {k: int(v) for k, v in (line.split() for line in out.stdout.splitlines())}


def test_fork_structs_agree_with_gcc(gcc_layout):
    g = gcc_layout
    assert g["sizeof.mptcp_sub_status"] == so.SUB_STATUS_SIZE
    assert g["mptcp_sub_ids.sub_status"] == so.SUB_IDS_HEADER
    assert g["mptcp_sub_tuple.addrs"] == 1
    assert g["sizeof.mptcp_close_sub_id"] == so.CLOSE_SUB_ID_SIZE
    assert 1 + 2 * g["sizeof.sockaddr_in"] == so.SUB_TUPLE_V4_SIZE == 33
    assert 1 + 2 * g["sizeof.sockaddr_in6"] == so.SUB_TUPLE_V6_SIZE == 57
    assert g["sizeof.mptcp_sub_getsockopt"] == g["sizeof.mptcp_sub_setsockopt"] == 32
    for kind in ("getsockopt", "setsockopt"):
        assert g[f"mptcp_sub_{kind}.level"] == 4
        assert g[f"mptcp_sub_{kind}.optname"] == 8
        assert g[f"mptcp_sub_{kind}.optval"] == 16
        assert g[f"mptcp_sub_{kind}.optlen"] == 24
    st = so.SubStatus(7, slave_sk=True, low_prio=True, pre_established=True)
    assert st.pack()[1] == g["status_byte1"]


def test_mptcp_info_structs_agree_with_gcc(gcc_layout):
    g = gcc_layout
    assert g["sizeof.mptcp_info"] == so.MPTCP_INFO_SIZE == 56
    assert (g["mptcp_info.total_sub_info_len"], g["mptcp_info.meta_info"],
            g["mptcp_info.initial"], g["mptcp_info.subflows"],
            g["mptcp_info.subflow_info"]) == (16, 24, 32, 40, 48)
    assert g["sizeof.mptcp_meta_info"] == so.MPTCP_META_INFO_SIZE == 48
    assert (g["mptcp_meta_info.mptcpi_rto"], g["mptcp_meta_info.mptcpi_total_retrans"],
            g["mptcp_meta_info.mptcpi_bytes_acked"],
            g["mptcp_meta_info.mptcpi_bytes_received"]) == (4, 24, 32, 40)
    assert g["sizeof.mptcp_sub_info"] == so.MPTCP_SUB_INFO_SIZE == 56
    assert g["mptcp_sub_info.dst"] == so.SUB_INFO_ADDR_SIZE


def test_mptcp_info_round_trips():
    req = so.MptcpInfo(so.TCP_INFO_SIZE, 3 * so.TCP_INFO_SIZE, 48, 56, 112, 0x1000, 0x2000,
                       0x3000, 0x4000)
    raw = req.pack()
    assert len(raw) == 56 and int.from_bytes(raw[24:32], "little") == 0x1000
    assert so.MptcpInfo.unpack(raw) == req
    assert so.MptcpInfo.unpack(raw[:8]) == so.MptcpInfo(so.TCP_INFO_SIZE, 3 * so.TCP_INFO_SIZE)
    meta = so.MptcpMetaInfo(state=1, rto=200000, bytes_acked=1 << 33, bytes_received=77)
    mraw = meta.pack()
    assert len(mraw) == 48 and int.from_bytes(mraw[32:40], "little") == 1 << 33
    assert so.MptcpMetaInfo.unpack(mraw) == meta
    assert len(meta.pack(20)) == 20
    sub = so.SubInfo(so.SockAddr("10.0.1.1", 4000), so.SockAddr("10.0.1.2", 80))
    sraw = sub.pack()
    assert len(sraw) == 56 and sraw[28:30] == socket.AF_INET.to_bytes(2, "little")
    assert so.SubInfo.unpack(sraw) == sub
    six = so.SubInfo(so.SockAddr("fd00::1", 1), so.SockAddr("fd00::2", 2))
    assert so.SubInfo.unpack(six.pack()) == six
    data, n = so.fill_array([b"a" * 10, b"b" * 10, b"c" * 10], 8, 20)
    assert (data, n) == (b"a" * 8 + b"b" * 8, 16)
    assert so.fill_array([b"x" * 4], 8, 100) == (b"xxxx" + b"\0" * 4, 8)


def test_sub_sockopt_bytes_match_offsets():
    raw = so.SubGetsockopt(3, so.SOL_TCP, so.TCP_INFO, 0x1122334455667788, 0xAABB).pack()
    assert len(raw) == 32 and raw[0] == 3
    assert int.from_bytes(raw[4:8], "little") == 6
    assert int.from_bytes(raw[8:12], "little") == 11
    assert int.from_bytes(raw[16:24], "little") == 0x1122334455667788
    assert int.from_bytes(raw[24:32], "little") == 0xAABB
    assert so.SubGetsockopt.unpack(raw).optval == 0x1122334455667788
    sraw = so.SubSetsockopt(2, so.SOL_IP, so.IP_TOS, 99, 4).pack()
    assert int.from_bytes(sraw[24:28], "little") == 4 and sraw[28:] == b"\0" * 4
    assert so.SubSetsockopt.unpack(sraw) == so.SubSetsockopt(2, 0, 1, 99, 4)


def test_tcp_info_agrees_with_gcc(gcc_layout):
    g = gcc_layout
    offs = so.tcp_info_offsets()
    for f in SYS_TCP_INFO_FIELDS:
        assert offs[f] == g[f"tcp_info.{f}"], f
    base = g["tcp_info.snd_wnd"] + 4  # 232: end of the part every kernel since 5.4 has
    assert base == 232
    for f in TAIL_FIELDS:
        assert offs[f] == base + g[f"tail.{f}"], f
    assert so.TCP_INFO_SIZE == base + g["sizeof.tail_618"] == 280


def test_tcp_info_size_matches_running_kernel():
    s = socket.socket()
    try:
        n = len(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024))
    finally:
        s.close()
    if n != so.TCP_INFO_SIZE:
        pytest.skip(f"this kernel's tcp_info has {n} bytes (ours follows Linux 6.18: 280)")
    assert n == so.TCP_INFO_SIZE


def test_tcp_info_reads_a_kernel_struct():
    lst = socket.socket()
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        cli = socket.create_connection(lst.getsockname(), timeout=10)
        srv, _ = lst.accept()
        cli.sendall(b"x" * 5000)
        srv.recv(10000)
        info = so.TcpInfo.unpack(cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512))
        cli.close()
        srv.close()
    finally:
        lst.close()
    assert info.state == so.TCP_STATES["ESTABLISHED"]
    assert info.snd_mss > 0 and info.snd_cwnd >= 1 and info.pmtu > 0
    assert info.bytes_acked <= 5001 and info.segs_out >= 1


def test_tcp_info_round_trip_and_truncation():
    info = so.TcpInfo(state=1, options=7, snd_wscale=7, rcv_wscale=9, fastopen_client_fail=2,
                      delivery_rate_app_limited=1, rtt=12345, snd_cwnd=10,
                      bytes_acked=1 << 40, total_rto=3, ecn_mode=2, options2=0xABCDEF,
                      accecn_fail_mode=9, rcv_wnd=65535)
    raw = info.pack()
    assert len(raw) == so.TCP_INFO_SIZE
    assert raw[6] == 7 | 9 << 4 and raw[7] == 1 | 2 << 1
    assert so.TcpInfo.unpack(raw) == info
    short = info.pack(104)
    assert len(short) == 104
    back = so.TcpInfo.unpack(short)
    assert back.snd_cwnd == 10 and back.bytes_acked == 0
    assert set(so.TCP_INFO_FIELDS) == set(info.as_dict())


def test_sub_ids_round_trip_and_length_rule():
    items = [so.SubStatus(1, fully_established=True, attached=True),
             so.SubStatus(4, low_prio=True, pre_established=True)]
    raw = so.pack_sub_ids(items)
    assert raw[0] == 2 and len(raw) == so.sub_ids_size(2) == 6
    assert so.unpack_sub_ids(raw) == items
    so.check_sub_ids_len(6, 2)
    with pytest.raises(OSError) as exc:
        so.check_sub_ids_len(5, 2)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        so.unpack_sub_ids(raw[:5])


@pytest.mark.parametrize("local,remote,size", [
    (("10.0.1.1", 40000), ("10.0.2.2", 80), 33),
    (("fd00::1", 40000), ("fd00:1::2", 443), 57),
])
def test_sub_tuple_round_trip(local, remote, size):
    t = so.SubTuple(5, so.SockAddr(*local), so.SockAddr(*remote))
    raw = t.pack()
    assert len(raw) == size
    assert so.SubTuple.unpack(raw) == t
    assert so.check_open_sub_tuple_len(size) == t.local.family
    fam = t.local.family
    if fam == socket.AF_INET:
        # compare with the C library's own sockaddr_in via the socket module's layout
        assert raw[1:3] == socket.AF_INET.to_bytes(2, "little")
        assert raw[3:5] == (40000).to_bytes(2, "big")
        assert raw[5:9] == socket.inet_aton("10.0.1.1")


def test_tuple_and_option_errors():
    for bad in (0, 32, 34, 56, 58):
        with pytest.raises(OSError) as exc:
            so.check_open_sub_tuple_len(bad)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        so.check_get_sub_tuple_len(32, socket.AF_INET)
    so.check_get_sub_tuple_len(57, socket.AF_INET6)
    with pytest.raises(OSError):
        so.check_get_sub_tuple_len(56, socket.AF_INET6)
    with pytest.raises(OSError):
        so.SubTuple.unpack(b"\x01" * 20)
    with pytest.raises(OSError) as exc:
        so.check_close_sub_id_len(0)
    assert exc.value.errno == errno.EINVAL
    assert so.unpack_close_sub_id(so.pack_close_sub_id(9)) == 9
    with pytest.raises(OSError):
        so.check_sub_id_known(3, [1, 2], "MPTCP_CLOSE_SUB_ID")
    for bad in (31, 33, 0):
        with pytest.raises(OSError) as exc:
            so.check_sub_sockopt_len(bad)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        so.check_mptcp_socket(False, so.MPTCP_GET_SUB_IDS)
    assert exc.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as exc:
        so.check_enabled_set(0)
    assert exc.value.errno == errno.EPERM
    so.check_enabled_set(2)


def test_name_options():
    known = ["default", "roundrobin", "redundant"]
    assert so.parse_name_option(b"roundrobin\0", so.MPTCP_SCHEDULER, True, True, known) \
        == "roundrobin"
    assert so.parse_name_option(b"default", so.MPTCP_SCHEDULER, True, True, known) == "default"
    cases = [(b"", True, True, errno.EINVAL), (b"default", False, True, errno.EPERM),
             (b"default", True, False, errno.EPERM), (b"nope", True, True, errno.ENOENT),
             (b"x" * 40, True, True, errno.ENOENT)]
    for val, on, closed, code in cases:
        with pytest.raises(OSError) as exc:
            so.parse_name_option(val, so.MPTCP_SCHEDULER, on, closed, known)
        assert exc.value.errno == code
    assert len(so.pack_name("fullmesh")) == 16
    assert so.unpack_int(so.pack_int(2)) == 2 and so.unpack_int(b"\x01") == 1


def test_constants():
    assert (so.MPTCP_ENABLED, so.MPTCP_SCHEDULER, so.MPTCP_PATH_MANAGER, so.MPTCP_INFO) \
        == (42, 43, 44, 45)
    assert (so.MPTCP_GET_SUB_IDS, so.MPTCP_CLOSE_SUB_ID, so.MPTCP_GET_SUB_TUPLE,
            so.MPTCP_OPEN_SUB_TUPLE, so.MPTCP_GET_SUB_INFO, so.MPTCP_SUB_GETSOCKOPT,
            so.MPTCP_SUB_SETSOCKOPT) == (66, 67, 68, 69, 70, 71, 72)
    assert so.SOL_TCP == 6 and so.MPTCP_INFO_FLAG_SAVE_MASTER == 1
