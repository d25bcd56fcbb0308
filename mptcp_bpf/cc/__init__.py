"""Congestion control plug-ins: coupled lia, olia, balia, wvegas; uncoupled reno, cubic.

Each controller instance serves one subflow; coupled ones share the connection's CcGroup
(mptcp_bpf.tcp.congestion). Windows are bytes on the subflow; the formulas use packets.
"""

from mptcp_bpf import plugins
from mptcp_bpf.cc.balia import Balia
from mptcp_bpf.cc.cubic import Cubic
from mptcp_bpf.cc.lia import Lia
from mptcp_bpf.cc.olia import Olia
from mptcp_bpf.cc.wvegas import INITIAL_ALPHA, TOTAL_ALPHA, GAMMA, Wvegas
from mptcp_bpf.tcp.congestion import CongestionControl

plugins.register("cc", "reno", CongestionControl, params={"hystart": True},
                 doc="uncoupled Reno (RFC 5681) per subflow, HyStart++ (RFC 9406) slow start")
plugins.register("cc", "lia", Lia, doc="RFC 6356 linked increases (coupled)")
plugins.register("cc", "olia", Olia, doc="opportunistic linked increases (coupled)")
plugins.register("cc", "balia", Balia, doc="balanced linked adaptation (coupled)")
plugins.register("cc", "wvegas", Wvegas,
                 params={"initial_alpha": INITIAL_ALPHA, "total_alpha": TOTAL_ALPHA,
                         "gamma": GAMMA},
                 doc="weighted Vegas, delay-based (coupled)")
plugins.register("cc", "cubic", Cubic,
                 params={"beta": 0.7, "c": 0.4, "fast_convergence": True},
                 doc="CUBIC (RFC 9438) per subflow, uncoupled")

__all__ = ["Balia", "Cubic", "Lia", "Olia", "Wvegas", "CongestionControl"]
