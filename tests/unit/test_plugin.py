"""`mptcp-bpf plugin show|set`, in-process and through a running stack's control socket."""

from __future__ import annotations

import json

import pytest

from mptcp_bpf import control, plugins
from mptcp_bpf.cli.commands.plugin import parse_setting
from mptcp_bpf.cli.main import main
from mptcp_bpf.errors import HintedError


class Stack:
    def conn_infos(self): return []
    def stats(self): return {}
    def endpoints(self): return []
    def limits(self): return {}
    def subscribe(self, cb): return lambda: None


def test_every_builtin_is_registered():
    assert set(plugins.names("pm")) >= {"default", "fullmesh", "ndiffports"}
    assert set(plugins.names("sched")) >= {"default", "roundrobin", "redundant"}
    assert set(plugins.names("cc")) >= {"reno", "lia", "olia", "balia", "wvegas"}
    for kind in plugins.KINDS:
        for name in plugins.names(kind):
            obj = plugins.create(kind, name)
            assert obj is not None


def test_parse_setting():
    assert parse_setting("sched.roundrobin.num_segments=2") == \
        ("sched", "roundrobin", "num_segments", "2")
    assert parse_setting("ndiffports.num_subflows=3") == ("pm", "ndiffports", "num_subflows", "3")
    for bad in ("roundrobin", "x.y.z.w=1", "bogus.num=1", "kind.a.b=1"):
        with pytest.raises(HintedError):
            parse_setting(bad)
    with pytest.raises(HintedError) as exc:
        parse_setting("default.x=1")      # default is a pm and a sched
    assert "several kinds" in str(exc.value)


def test_show_without_stack_lists_registry(ctl_dir, capsys):
    assert main(["plugin", "show"]) == 0
    out = capsys.readouterr().out
    assert "roundrobin" in out and "num_segments=1" in out and "registry defaults" in out
    assert main(["-j", "plugin", "show", "pm"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["pm"] and data["pm"]["ndiffports"]["params"]["num_subflows"] == 2


def test_set_without_stack_explains(ctl_dir, capsys):
    assert main(["plugin", "set", "ndiffports.num_subflows=3"]) == 1
    err = capsys.readouterr().err
    assert "no mptcp-bpf stack" in err and "--set ndiffports.num_subflows=3" in err
    assert main(["plugin", "set", "nope.x=1"]) == 1
    assert "no plug-in named" in capsys.readouterr().err


def test_set_and_show_through_the_stack(ctl_dir, capsys):
    srv = control.ControlServer(Stack()).start()
    old = plugins.get("pm", "ndiffports").params["num_subflows"]
    try:
        assert main(["plugin", "set", "pm.ndiffports.num_subflows=4"]) == 0
        assert capsys.readouterr().out.strip() == "pm.ndiffports.num_subflows=4"
        assert plugins.get("pm", "ndiffports").params["num_subflows"] == 4
        assert main(["-j", "plugin", "show", "pm"]) == 0
        assert json.loads(capsys.readouterr().out)["pm"]["ndiffports"]["params"] == \
            {"num_subflows": 4}
        assert main(["plugin", "set", "sched.roundrobin.cwnd_limited=maybe"]) == 1
        assert "boolean" in capsys.readouterr().err
    finally:
        plugins.set_param("pm", "ndiffports", "num_subflows", old)
        srv.stop()


def test_third_party_plugin_through_an_entry_point(tmp_path, monkeypatch):
    """A module named in the mptcp_bpf.plugins entry-point group registers its plug-ins."""
    (tmp_path / "mpbp_thirdparty.py").write_text(
        "from mptcp_bpf import plugins\n"
        "class Lowest:\n"
        "    name = 'lowestid'\n"
        "    def __init__(self, params=None):\n"
        "        self.params = params\n"
        "    def select(self, conn, candidates, reinject=False):\n"
        "        return sorted(candidates, key=lambda s: s.id)[:1]\n"
        "plugins.register('sched', 'lowestid', Lowest, params={'x': 1})\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class EP:
        value = "mpbp_thirdparty"

    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [EP()] if group == "mptcp_bpf.plugins" else [])
    monkeypatch.setattr(plugins, "_loaded", False)
    try:
        assert "lowestid" in plugins.names("sched")
        sched = plugins.create("sched", "lowestid")
        assert sched.params == {"x": 1}
        assert "lowestid" in json.dumps(__import__("mptcp_bpf.control").control.plugin_table())
    finally:
        plugins._registry["sched"].pop("lowestid", None)
