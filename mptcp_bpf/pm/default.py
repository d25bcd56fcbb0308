"""The default path manager: announces nothing and creates nothing.

Meant for applications that drive subflows themselves through the enhanced socket API
(MPTCP_OPEN_SUB_TUPLE, MPTCP_CLOSE_SUB_ID).
"""

from __future__ import annotations

from mptcp_bpf.pm.common import BasePathManager


class DefaultPathManager(BasePathManager):
    """No announcements, no joins: subflows come from the enhanced API only."""

    name = "default"
