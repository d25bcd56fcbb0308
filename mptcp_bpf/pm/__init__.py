"""Path managers: default (nothing), fullmesh, ndiffports.

One instance per connection; hooks as in mptcp_bpf.mptcp.api.PathManagerOps.
"""

from mptcp_bpf import plugins
from mptcp_bpf.pm.default import DefaultPathManager
from mptcp_bpf.pm.fullmesh import FullMeshPathManager
from mptcp_bpf.pm.ndiffports import NDiffPortsPathManager

plugins.register("pm", "default", DefaultPathManager,
                 doc="announces nothing, creates nothing (enhanced socket API)")
plugins.register("pm", "fullmesh", FullMeshPathManager, params={"num_subflows": 1},
                 doc="every local address to every remote address")
plugins.register("pm", "ndiffports", NDiffPortsPathManager, params={"num_subflows": 2},
                 doc="several subflows over the initial pair, different source ports")

__all__ = ["DefaultPathManager", "FullMeshPathManager", "NDiffPortsPathManager"]
