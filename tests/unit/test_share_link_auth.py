"""Share links and the delivered session key at the VM's forward-auth (webauth.py)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agentspaces_vm import share_links
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.webauth import (
    SECURE_COOKIE,
    SECURE_SHARE_COOKIE,
    SHARE_COOKIE,
    Account,
    LinkPort,
    SessionSigner,
    WebAuth,
    WebRequest,
    share_token,
    without_share_token,
)

HOST = "demo-default-1a2b3c.example.test"
NOW = 1_800_000_000.0
PASSWORD = "correct horse"
HASH = hash_password(PASSWORD, log_n=10)
KEY = share_links.decode_key(share_links.new_key())
OTHER_KEY = share_links.decode_key(share_links.new_key())
SESSION_KEY = share_links.decode_key(share_links.new_key())
assert KEY and OTHER_KEY and SESSION_KEY
ACCOUNT = Account("agent", HASH, session_key=SESSION_KEY, share_key=KEY)
LINK = LinkPort(HOST, 3000)


class Wall:
    now = NOW


@pytest.fixture
def wall() -> type[Wall]:
    Wall.now = NOW
    return Wall


@pytest.fixture
def web(wall: type[Wall]) -> WebAuth:
    return WebAuth(b"local" * 8, wall_clock=lambda: wall.now, monotonic=lambda: 100.0)


def token(port: int = 3000, *, key: bytes = KEY, host: str = HOST, lasts: float = 3600,
          may_wake: bool = False) -> str:
    return share_links.mint(key, host, port, int(NOW + lasts), may_wake=may_wake)


def request(uri: str = "/", *, host: str = f"3000.{HOST}", **changes: Any) -> WebRequest:
    base: dict[str, Any] = dict(method="GET", uri=uri, host=host, scheme="https",
                                client="203.0.113.7", fetch_mode="navigate",
                                accept="text/html")
    base.update(changes)
    return WebRequest(**base)


def follow(web: WebAuth, uri: str, link: LinkPort | None = LINK, **changes: Any) -> tuple[
        int, dict[str, str]]:
    answer = web.check(request(uri, **changes), ACCOUNT, link)
    return answer.status, dict(answer.headers)


def test_a_link_redirects_without_its_token_and_sets_a_host_only_lax_cookie(
        web: WebAuth) -> None:
    t = token()
    status, headers = follow(web, f"/app/page?x=1&{share_links.QUERY_PARAM}={t}&y=%20two")
    assert status == 303
    assert headers["Location"] == "/app/page?x=1&y=%20two"  # the rest exactly as sent
    assert headers["Set-Cookie"] == (f"{SECURE_SHARE_COOKIE}={t}; Path=/; Max-Age=3600; "
                                     "HttpOnly; SameSite=Lax; Secure")
    assert "Domain" not in headers["Set-Cookie"]  # host-only: no other port or workspace
    # The cookie then opens the port, for any method the origin policy allows.
    with_cookie = request("/app/page", cookie=f"a=b; {SECURE_SHARE_COOKIE}={t}")
    assert web.check(with_cookie, ACCOUNT, LINK).status == 204
    post = request("/api", method="POST", origin=f"https://3000.{HOST}",
                   cookie=f"{SECURE_SHARE_COOKIE}={t}")
    assert web.check(post, ACCOUNT, LINK).status == 204


def test_over_plain_http_the_cookie_has_no_prefix_and_is_not_secure(web: WebAuth) -> None:
    t = token()
    status, headers = follow(web, f"/?{share_links.QUERY_PARAM}={t}", scheme="http")
    assert status == 303 and headers["Location"] == "/"
    assert headers["Set-Cookie"].startswith(f"{SHARE_COOKIE}={t};")
    assert "Secure" not in headers["Set-Cookie"]
    assert web.check(request(scheme="http", cookie=f"{SHARE_COOKIE}={t}"), ACCOUNT,
                     LINK).status == 204
    # The HTTPS name is not read over HTTP, nor the reverse.
    assert web.check(request(scheme="http", cookie=f"{SECURE_SHARE_COOKIE}={t}"), ACCOUNT,
                     LINK).status == 401
    assert web.check(request(cookie=f"{SHARE_COOKIE}={t}"), ACCOUNT, LINK).status == 401


@pytest.mark.parametrize("bad", [
    token(3001),  # another port's
    token(key=OTHER_KEY),  # signed with another (or an old, rotated) key
    token(host="other-default-9f8e7d.example.test"),  # another workspace's
    token(lasts=-1),  # expired
    token()[:-2] + "AA",  # tampered
    token().replace(".-.", ".w."),  # wake flag flipped
    "v1.3000.99999999999.-." + "A" * 43,
    "",
    "x" * 5000,
])
def test_bad_links_get_a_bare_403(web: WebAuth, bad: str) -> None:
    answer = web.check(request(f"/?{share_links.QUERY_PARAM}={bad}"), ACCOUNT, LINK)
    assert answer.status == 403 and answer.body == b"forbidden\n"
    assert not any(name == "Set-Cookie" for name, _ in answer.headers)
    # ... and as a cookie they open nothing either.
    cookie = request(cookie=f"{SECURE_SHARE_COOKIE}={bad}")
    assert web.check(cookie, ACCOUNT, LINK).status == 401


def test_a_link_never_opens_the_ide_a_private_port_or_without_a_key(web: WebAuth) -> None:
    t = token()
    uri = f"/?{share_links.QUERY_PARAM}={t}"
    assert web.check(request(uri, host=HOST), ACCOUNT, None).status == 403  # the IDE
    assert web.check(request(uri, host=f"3001.{HOST}"), ACCOUNT, None).status == 403
    # Even the right port refuses while no key was delivered.
    keyless = Account("agent", HASH)
    assert web.check(request(uri), keyless, LINK).status == 403
    # Its cookie does nothing on the IDE or a private port either.
    cookie = f"{SECURE_SHARE_COOKIE}={t}"
    assert web.check(request(host=HOST, cookie=cookie), ACCOUNT, None).status == 401
    assert web.check(request(cookie=cookie), keyless, LINK).status == 401


def test_the_token_is_refused_with_a_session_too_and_only_on_get(web: WebAuth) -> None:
    """The token never passes through to the program, whatever else is valid."""
    session = SessionSigner(SESSION_KEY).issue(f"3000.{HOST}", HASH, NOW)
    signed_in = f"{SECURE_COOKIE}={session}"
    assert web.check(request(cookie=signed_in), ACCOUNT, LINK).status == 204
    assert web.check(request(f"/?{share_links.QUERY_PARAM}={token(3001)}", cookie=signed_in),
                     ACCOUNT, LINK).status == 403
    assert web.check(request(f"/?{share_links.QUERY_PARAM}={token()}", cookie=signed_in),
                     ACCOUNT, LINK).status == 303
    head = request(f"/?{share_links.QUERY_PARAM}={token()}", method="POST",
                   origin=f"https://3000.{HOST}")
    assert web.check(head, ACCOUNT, LINK).status == 403
    twice = f"/?{share_links.QUERY_PARAM}={token()}&{share_links.QUERY_PARAM}={token()}"
    assert web.check(request(twice), ACCOUNT, LINK).status == 403


def test_expiry_and_rotation_end_the_cookie(web: WebAuth, wall: type[Wall]) -> None:
    t = token(lasts=600)
    cookie = request(cookie=f"{SECURE_SHARE_COOKIE}={t}")
    assert web.check(cookie, ACCOUNT, LINK).status == 204
    rotated = Account("agent", HASH, session_key=SESSION_KEY, share_key=OTHER_KEY)
    assert web.check(cookie, rotated, LINK).status == 401
    wall.now = NOW + 600
    assert web.check(cookie, ACCOUNT, LINK).status == 401
    # Max-Age follows the token's expiry, counted from now.
    wall.now = NOW + 100
    _, headers = follow(web, f"/?{share_links.QUERY_PARAM}={t}")
    assert "Max-Age=500;" in headers["Set-Cookie"]


def test_the_password_still_opens_a_link_port(web: WebAuth) -> None:
    basic = "Basic " + base64.b64encode(f"agent:{PASSWORD}".encode()).decode()
    assert web.check(request(authorization=basic), ACCOUNT, LINK).status == 204
    page = web.check(request(), ACCOUNT, LINK)
    assert page.status == 401 and b"Sign in" in page.body  # the login page, as elsewhere


def test_the_delivered_session_key_signs_sessions(web: WebAuth) -> None:
    """A session signed with the workspace's key (as the wake gateway signs them) is
    accepted; the agent's own key is used only while none was delivered."""
    form = f"password={PASSWORD.replace(' ', '+')}".encode()
    login = web.login(request(host=HOST, method="POST"), form, ACCOUNT)
    cookie = dict(login.headers)["Set-Cookie"].split(";")[0]
    value = cookie.partition("=")[2]
    assert SessionSigner(SESSION_KEY).valid(value, HOST, HASH, NOW)
    gateway_made = SessionSigner(SESSION_KEY).issue(HOST, HASH, NOW)
    signed = request(host=HOST, cookie=f"{SECURE_COOKIE}={gateway_made}")
    assert web.check(signed, ACCOUNT, None).status == 204
    # A new session key (rotated in the Secret) ends those sessions.
    rotated = Account("agent", HASH, session_key=OTHER_KEY, share_key=KEY)
    assert web.check(signed, rotated, None).status == 401
    # Without a delivered key, the agent's own key signs and checks.
    local = Account("agent", HASH)
    own = web.login(request(host=HOST, method="POST"), form, local)
    own_cookie = dict(own.headers)["Set-Cookie"].split(";")[0]
    assert web.check(request(host=HOST, cookie=own_cookie), local, None).status == 204
    assert web.check(request(host=HOST, cookie=own_cookie), ACCOUNT, None).status == 401


@pytest.mark.parametrize(("uri", "found"), [
    ("/", None),
    ("/?a=1", None),
    (f"/?{share_links.QUERY_PARAM}=abc", "abc"),
    (f"/p?a=1&{share_links.QUERY_PARAM}=a%2Eb", "a.b"),
    (f"/?{share_links.QUERY_PARAM}", ""),
    ("/?agentspaces%2Dshare=abc", "abc"),  # percent-encoded names count too
    (f"/?{share_links.QUERY_PARAM}=a&{share_links.QUERY_PARAM}=b", ""),
])
def test_share_token_parsing(uri: str, found: str | None) -> None:
    assert share_token(uri) == found


@pytest.mark.parametrize(("uri", "location"), [
    (f"/?{share_links.QUERY_PARAM}=t", "/"),
    (f"/a/b?{share_links.QUERY_PARAM}=t&c=d", "/a/b?c=d"),
    (f"//evil.example/?{share_links.QUERY_PARAM}=t", "/"),  # never off the host
    (f"/\\evil.example/?{share_links.QUERY_PARAM}=t", "/"),
    (f"https://evil.example/?{share_links.QUERY_PARAM}=t", "/"),
    (f"/x\r\nSet-Cookie: a=b?{share_links.QUERY_PARAM}=t", "/"),
])
def test_the_redirect_stays_on_the_host(uri: str, location: str) -> None:
    assert without_share_token(uri) == location


def test_account_repr_hides_the_keys() -> None:
    shown = repr(ACCOUNT)
    assert str(KEY) not in shown and str(SESSION_KEY) not in shown
