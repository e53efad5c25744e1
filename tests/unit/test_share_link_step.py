"""Share links on the operator's side: the access Secret's keys, the annotation policy
(pure, with the clock passed in) and what a reconcile writes, emits and delivers."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from agentspaces.api.share_links import (
    KEY_FIELD,
    LINK_ANNOTATION_PREFIX,
    REVOKE_ANNOTATION,
    SESSION_KEY_FIELD,
    parse_lifetime,
    parse_request,
)
from agentspaces.api.status import ShareLinksStatus
from agentspaces.reconcile import agent_step
from agentspaces.reconcile.owned_secrets import Access
from agentspaces.reconcile.share_link_step import Mint, plan, recorded
from agentspaces_vm import share_links
from agentspaces_vm.contracts import AgentStatus, BootStage
from tests.support.scope_builder import SETTINGS, ScopeBuilder

NOW = 1_800_000_000.0
PORTS = {3000: "link", 3001: "private", 8080: "public", 5173: "link"}
ACCESS = ("team-a", "demo-access")


def link_key(port: int) -> str:
    return f"{LINK_ANNOTATION_PREFIX}{port}"


# -- values --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "lifetime"), [
    ("24h", timedelta(hours=24)), ("90m", timedelta(minutes=90)), ("1h30m", timedelta(hours=1.5)),
    ("7d", timedelta(days=7)), ("30d", timedelta(days=30)), (" 1m ", timedelta(minutes=1)),
])
def test_lifetimes(text: str, lifetime: timedelta) -> None:
    assert parse_lifetime(text) == lifetime


@pytest.mark.parametrize(("text", "problem"), [
    ("31d", "longer than the most a link may last (30d, 720h)"),
    ("721h", "longer than the most"),
    ("30s", "shorter than a minute"),
    ("forever", "is not a duration"),
    ("", "is not a duration"),
    ("-1h", "is not a duration"),
])
def test_bad_lifetimes_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_lifetime(text)


def test_values_take_an_optional_wake_flag_and_nothing_else() -> None:
    assert parse_request("24h") == parse_request(" 24h ")
    assert not parse_request("24h").may_wake and parse_request("24h,wake").may_wake
    for bad in ("24h,sleep", "24h,wake,wake", "wake", "24h;wake"):
        with pytest.raises(ValueError):
            parse_request(bad)


# -- the policy ----------------------------------------------------------------------------

def test_nothing_asked_nothing_done() -> None:
    result = plan({"other/annotation": "x"}, None, PORTS, NOW)
    assert not result.rotate and not result.mints and not result.refusals
    assert result.status is None


def test_a_revoke_rotates_once_per_value() -> None:
    first = plan({REVOKE_ANNOTATION: "1"}, None, PORTS, NOW)
    assert first.rotate and first.status == ShareLinksStatus(revoke_handled="1")
    again = plan({REVOKE_ANNOTATION: "1"}, first.status, PORTS, NOW)
    assert not again.rotate and again.status == first.status
    assert plan({REVOKE_ANNOTATION: "2"}, first.status, PORTS, NOW).rotate
    # Removing the annotation revokes nothing and keeps the record.
    gone = plan({}, first.status, PORTS, NOW)
    assert not gone.rotate and gone.status == first.status


def test_a_link_is_made_once_per_value_for_link_ports_only() -> None:
    asked = {link_key(3000): "24h", link_key(5173): "2h,wake", link_key(3001): "1h",
             link_key(8080): "1h", link_key(4000): "1h"}
    result = plan(asked, None, PORTS, NOW)
    assert result.mints == (Mint(3000, int(NOW) + 86400, False),
                            Mint(5173, int(NOW) + 7200, True))
    refused = {r.annotation: r.message for r in result.refusals}
    assert refused == {
        link_key(3001): "port 3001 is private; share links open only ports with "
                        "visibility link (spec.access.ports)",
        link_key(8080): "port 8080 is public; share links open only ports with "
                        "visibility link (spec.access.ports)",
        link_key(4000): "port 4000 is private; share links open only ports with "
                        "visibility link (spec.access.ports)"}
    assert result.status is not None
    assert result.status.create_handled == {"3000": "24h", "5173": "2h,wake", "3001": "1h",
                                            "8080": "1h", "4000": "1h"}
    # The same values later: nothing is made or refused again (no event storm).
    later = plan(asked, result.status, PORTS, NOW + 60)
    assert not later.mints and not later.refusals and later.status == result.status
    # A new value makes a new link; a removed annotation is forgotten, so setting the
    # same value again makes one too.
    changed = plan({link_key(3000): "48h"}, result.status, PORTS, NOW + 60)
    assert changed.mints == (Mint(3000, int(NOW) + 60 + 48 * 3600, False),)
    assert changed.status is not None and changed.status.create_handled == {"3000": "48h"}
    removed = plan({}, changed.status, PORTS, NOW)
    assert removed.status == ShareLinksStatus()
    back = plan({link_key(3000): "48h"}, removed.status, PORTS, NOW)
    assert len(back.mints) == 1


@pytest.mark.parametrize(("key", "value", "problem"), [
    (link_key(3000), "40d", "longer than the most a link may last"),
    (link_key(3000), "soon", "is not a duration"),
    (link_key(3000), "1h,sleep", "expected <duration>[,wake]"),
    (f"{LINK_ANNOTATION_PREFIX}web", "1h", "'web' is not a port number"),
    (f"{LINK_ANNOTATION_PREFIX}0", "1h", "is not a port number"),
    (f"{LINK_ANNOTATION_PREFIX}70000", "1h", "is not a port number"),
])
def test_bad_annotations_are_refused_once_with_a_reason(key: str, value: str,
                                                        problem: str) -> None:
    result = plan({key: value}, None, PORTS, NOW)
    assert not result.mints and len(result.refusals) == 1
    assert result.refusals[0].annotation == key and problem in result.refusals[0].message
    assert not plan({key: value}, result.status, PORTS, NOW).refusals


def test_status_stays_bounded_whatever_the_annotations_hold() -> None:
    huge = "x" * 10_000
    assert recorded(huge).startswith("sha256:") and len(recorded(huge)) == 23
    assert recorded("line\nbreak").startswith("sha256:")
    many = {link_key(port): "1h" for port in range(10_000, 10_200)}
    result = plan({**many, REVOKE_ANNOTATION: huge}, None, {}, NOW)
    assert result.status is not None and len(result.status.create_handled) == 64
    assert result.status.revoke_handled == recorded(huge)
    ShareLinksStatus.model_validate(result.status.model_dump(by_alias=True))  # fits the CRD


# -- a reconcile ---------------------------------------------------------------------------

async def running(b: ScopeBuilder) -> None:
    """Reconciles until the agent has its secrets (the fake agent takes the keys)."""
    await b.reconcile()
    b.servers.boot()
    for _ in range(4):
        b.clock.advance(SETTINGS.boot_poll)
        await b.reconcile()
        if b.agent.web_keys:
            return
    raise AssertionError("secrets never delivered")


def access(b: ScopeBuilder) -> dict[str, str]:
    return dict(b.kube.secrets[ACCESS].data)


async def test_an_existing_access_secret_gets_both_keys_once_and_the_vm_gets_them(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    assert KEY_FIELD not in access(b)  # a Secret from before share links
    await running(b)
    data = access(b)
    assert share_links.decode_key(data[KEY_FIELD]) is not None
    assert share_links.decode_key(data[SESSION_KEY_FIELD]) is not None
    assert data[KEY_FIELD] != data[SESSION_KEY_FIELD]
    assert data["password"] and data["scryptHash"]  # the rest untouched
    assert b.agent.web_keys == {"shareLinkKey": data[KEY_FIELD],
                                "sessionKey": data[SESSION_KEY_FIELD]}
    # Kept across reconciles: no rewrite, no re-delivery.
    b.clear_calls()
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile()
    assert access(b) == data
    assert "replace_secret_data" not in b.kube.calls.methods()
    assert "put_secrets" not in b.agent.calls.methods()
    # A key a user emptied is made again (an empty key would accept no link at all).
    b.kube.secrets[ACCESS] = replace(b.kube.secrets[ACCESS],
                                     data={**data, SESSION_KEY_FIELD: ""})
    await b.reconcile()
    assert share_links.decode_key(access(b)[SESSION_KEY_FIELD]) is not None
    assert access(b)[KEY_FIELD] == data[KEY_FIELD]


async def test_the_revoke_annotation_rotates_the_key_and_re_delivers_it(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_spec(access={"ports": [{"port": 3000, "visibility": "link"}]})
    await running(b)
    old = access(b)[KEY_FIELD]
    b.body["metadata"]["annotations"] = {link_key(3000): "1h"}
    await b.reconcile()
    assert access(b)["shareLink.3000"]
    b.clear_calls()
    b.body["metadata"]["annotations"] = {link_key(3000): "1h", REVOKE_ANNOTATION: "t1"}
    await b.reconcile()
    new = access(b)[KEY_FIELD]
    assert new != old and share_links.decode_key(new) is not None
    assert access(b)["shareLink.3000"] == ""  # the dead link is not left to be copied
    assert b.agent.web_keys["shareLinkKey"] == new  # delivered in the same reconcile
    assert b.status["shareLinks"]["revokeHandled"] == "t1"
    assert b.reasons() == ["ShareLinksRevoked", "SecretsDelivered"]
    assert old not in str(b.events) and new not in str(b.events)
    # Once per value.
    b.clear_calls()
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile()
    assert access(b)[KEY_FIELD] == new and "ShareLinksRevoked" not in b.reasons()


async def test_the_share_link_annotation_writes_a_url_that_verifies(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_spec(access={"ports": [{"port": 3000, "visibility": "link"},
                                                  {"port": 3002, "visibility": "private"}]})
    await running(b)
    b.clear_calls()
    b.body["metadata"]["annotations"] = {link_key(3000): "24h,wake", link_key(3002): "1h"}
    await b.reconcile()
    url = access(b)["shareLink.3000"]
    host = f"{b.label}.example.com"
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == f"https://3000.{host}"
    token = parse_qs(parts.query)[share_links.QUERY_PARAM][0]
    key = share_links.decode_key(access(b)[KEY_FIELD])
    assert key is not None
    now = b.clock().timestamp()
    grant = share_links.verify(key, token, host, 3000, now)
    assert grant is not None and grant.may_wake and grant.expires == int(now) + 86400
    assert share_links.verify(key, token, host, 3002, now) is None
    assert "shareLink.3002" not in access(b)
    created = [e for e in b.events if e.reason == "ShareLinkCreated"]
    refused = [e for e in b.events if e.reason == "ShareLinkRefused"]
    assert len(created) == 1 and "port 3000" in created[0].message
    assert "Secret demo-access key shareLink.3000" in created[0].message
    assert "may wake the workspace" in created[0].message
    assert refused[0].type == "Warning" and "port 3002 is private" in refused[0].message
    # Neither the token nor the key in events or status.
    assert token not in str(b.events) and token not in str(b.status)
    assert access(b)[KEY_FIELD] not in str(b.status)
    # The link port went to the agent with its config.
    assert b.agent.link_ports == (3000,)


async def test_an_agent_from_before_share_links_gets_none_of_their_fields(
        scope_builder: ScopeBuilder) -> None:
    """It refuses fields it does not know; its secrets version stays what it was."""
    b = scope_builder.with_spec(access={"ports": [{"port": 3000, "visibility": "link"}]})
    b.agent.state = AgentStatus(version="old", boot_stage=BootStage.WAITING_FOR_START)
    await running_old(b)
    assert b.agent.web_keys == {"shareLinkKey": None, "sessionKey": None}
    assert b.agent.link_ports == ()
    scope = b.scope()
    plain = Access("agent", "pw", "$scrypt$x", share_link_key="k", session_key="s")
    rotated = Access("agent", "pw", "$scrypt$x", share_link_key="k2", session_key="s")
    assert agent_step.secrets_version(scope, plain) == agent_step.secrets_version(scope, rotated)
    assert agent_step.secrets_version(scope, plain, share_links=True) != \
        agent_step.secrets_version(scope, rotated, share_links=True)


async def running_old(b: ScopeBuilder) -> None:
    await b.reconcile()
    b.servers.boot()
    for _ in range(4):
        b.clock.advance(SETTINGS.boot_poll)
        await b.reconcile()
        if "put_secrets" in b.agent.calls.methods():
            return
    raise AssertionError("secrets never delivered")
