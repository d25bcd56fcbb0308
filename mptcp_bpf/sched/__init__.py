"""Packet schedulers: default (lowest RTT), roundrobin, redundant.

One instance per connection; `select(conn, candidates, reinject)` returns the subflows the
next chunk goes on (see mptcp_bpf.mptcp.api.SchedulerOps).
"""

from mptcp_bpf import plugins
from mptcp_bpf.sched.default import DefaultScheduler
from mptcp_bpf.sched.redundant import RedundantScheduler
from mptcp_bpf.sched.roundrobin import RoundRobinScheduler

plugins.register("sched", "default", DefaultScheduler,
                 doc="lowest smoothed RTT among subflows with window room")
plugins.register("sched", "roundrobin", RoundRobinScheduler,
                 params={"num_segments": 1, "cwnd_limited": True},
                 doc="num_segments chunks per subflow in turn")
plugins.register("sched", "redundant", RedundantScheduler,
                 doc="every chunk on every usable subflow")

__all__ = ["DefaultScheduler", "RedundantScheduler", "RoundRobinScheduler"]
