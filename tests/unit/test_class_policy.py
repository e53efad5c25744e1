"""The class policy: allowlists and caps refuse a spec, reserved ports are dropped, and
the class defaults and caps make the effective spec."""

from __future__ import annotations

from datetime import timedelta

from agentspaces.api.enums import Reason
from agentspaces.api.model import RESERVED_PORTS
from agentspaces.reconcile.class_policy import accepted_condition, check
from agentspaces.vmconfig.agent_config import render_agent_config
from agentspaces.vmconfig.claude import reserved_ports
from tests.unit.vmconfig_inputs import WS, make_klass, make_spec

LIMITS = {"serverTypes": ["cx23", "cpx32"], "images": ["ubuntu-24.04"],
          "idleTimeout": "2h", "agentBusyCap": "8h", "lifetime": "12h"}


def test_a_spec_within_the_limits_is_accepted() -> None:
    klass = make_klass(limits=LIMITS)
    verdict = check(make_spec(klass, server={"type": "cpx32"}, idle={"timeout": "2h"},
                              lifetime={"max": "12h"}), klass)
    assert verdict.allowed and verdict.refused_ports == ()
    assert accepted_condition(verdict, "standard", False)[:2] == (True, Reason.SPEC_ACCEPTED)


def test_each_limit_refuses_what_exceeds_it() -> None:
    klass = make_klass(limits=LIMITS)
    cases = {
        "server type ccx63": {"server": {"type": "ccx63"}},
        "image debian-13": {"server": {"image": "debian-13"}},
        "image 123456": {"server": {"image": "123456"}},
        "idle.timeout 8760h": {"idle": {"timeout": "8760h"}},
        "idle.agentBusyCap 24h": {"idle": {"agentBusyCap": "24h"}},
        "lifetime.max 13h": {"lifetime": {"max": "13h"}},
    }
    for expected, spec in cases.items():
        verdict = check(make_spec(klass, **spec), klass)
        assert not verdict.allowed, expected
        assert any(expected in v for v in verdict.violations), (expected, verdict)
        ok, reason, message = accepted_condition(verdict, "standard", False)
        assert (ok, reason) == (False, Reason.NOT_ALLOWED_BY_CLASS)
        assert "no server is created" in message


def test_without_an_image_allowlist_numeric_ids_are_refused_but_names_are_not() -> None:
    klass = make_klass()
    assert check(make_spec(klass, server={"image": "debian-13"}), klass).allowed
    verdict = check(make_spec(klass, server={"image": "987654"}), klass)
    assert verdict.violations == ("image id 987654 needs the class to list it in "
                                  "limits.images",)
    # The class's own image is the admin's choice, even when it is a snapshot id.
    snapshot_class = make_klass(server={"image": "987654", "osProfile": "ubuntu-24.04"})
    assert check(make_spec(snapshot_class), snapshot_class).allowed


def test_without_limits_anything_within_the_schema_goes() -> None:
    klass = make_klass()
    spec = make_spec(klass, server={"type": "ccx63"}, idle={"timeout": "8760h"})
    assert check(spec, klass).allowed


def test_the_lifetime_cap_is_the_lifetime_when_nothing_else_sets_one() -> None:
    capped = make_klass(limits={"lifetime": "12h"})
    assert make_spec(capped).lifetime_max == timedelta(hours=12)
    with_default = make_klass(limits={"lifetime": "12h"}, lifetime={"max": "4h"})
    assert make_spec(with_default).lifetime_max == timedelta(hours=4)
    assert make_spec(with_default, lifetime={"max": "6h"}).lifetime_max == timedelta(hours=6)
    assert make_spec(make_klass()).lifetime_max is None


def test_a_workspace_without_an_idle_timeout_inherits_the_class_default() -> None:
    klass = make_klass(limits={"idleTimeout": "2h"}, idle={"timeout": "45m"})
    spec = make_spec(klass)
    assert spec.idle.timeout == timedelta(minutes=45)
    assert check(spec, klass).allowed


def test_a_class_port_is_never_published_and_the_condition_names_it() -> None:
    klass = make_klass(agent={"port": 9555})
    spec = make_spec(klass, access={"ports": [{"port": 9555, "visibility": "public"},
                                              {"port": 8080, "visibility": "public"}]})
    assert spec.public_ports == (8080,)
    assert spec.refused_ports == (9555,)
    config = render_agent_config(WS, spec, klass, host="demo.example.com",
                                 token_sha256="0" * 64)
    assert config["publicPorts"] == [8080]
    verdict = check(spec, klass)
    assert verdict.allowed  # the rest of the workspace runs
    ok, reason, message = accepted_condition(verdict, "standard", False)
    assert (ok, reason) == (False, Reason.RESERVED_PORT)
    assert "9555" in message


def test_admission_reserves_every_port_of_the_default_vm() -> None:
    """model.RESERVED_PORTS (the CEL rule) and the VM's own list agree."""
    assert set(reserved_ports(make_klass())) == set(RESERVED_PORTS)
    klass = make_klass(tls={"httpPort": 8081}, agent={"port": 9555})
    assert set(reserved_ports(klass)) <= klass.reserved_ports


def test_a_tightened_class_keeps_a_running_server_but_says_it_will_not_restart() -> None:
    klass = make_klass(limits={"serverTypes": ["cx23"]})
    verdict = check(make_spec(klass, server={"type": "cpx32"}), klass)
    ok, reason, message = accepted_condition(verdict, "standard", True)
    assert (ok, reason) == (False, Reason.NOT_ALLOWED_BY_CLASS)
    assert "not started again" in message
