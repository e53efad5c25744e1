"""The web front's access decisions (webauth.py) and the password hash, with fake clocks."""

from __future__ import annotations

import asyncio
import base64
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from agentspaces.kube import SecretData
from agentspaces.reconcile.owned_secrets import _fingerprint, _hash_fields, ensure_access
from agentspaces.reconcile.scope import Scope
from agentspaces_vm import password_hash
from agentspaces_vm.password_hash import (
    PasswordHashError,
    ScryptHash,
    hash_password,
    parse_scrypt_hash,
)
from agentspaces_vm.webauth import (
    COOKIE,
    SECURE_COOKIE,
    SESSION_SECONDS,
    Account,
    AttemptLimiter,
    SessionSigner,
    WebAuth,
    WebRequest,
    client_key,
    origin_allowed,
    safe_next,
    session_cookies,
)
from tests.support.clock import FakeClock

HOST = "demo-default-1a2b3c.example.test"
OTHER = "https://8080.mallory-default-9f8e7d.example.test"
PASSWORD = "correct horse"
HASH = hash_password(PASSWORD, log_n=10)
ACCOUNT = Account("agent", HASH)


def request(**changes: Any) -> WebRequest:
    base: dict[str, Any] = dict(method="GET", uri="/", host=HOST, scheme="https",
                                client="203.0.113.7")
    base.update(changes)
    return WebRequest(**base)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def web(clocks: Clocks) -> WebAuth:
    return WebAuth(b"k" * 32, wall_clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts real scrypt checks."""
    calls: list[int] = []
    real = ScryptHash.verify

    def counting(self: ScryptHash, password: bytes) -> bool:
        calls.append(1)
        return real(self, password)

    monkeypatch.setattr(password_hash.ScryptHash, "verify", counting)
    return calls


# -- the password hash --------------------------------------------------------------------

def test_hash_round_trip_and_bounds() -> None:
    parsed = parse_scrypt_hash(HASH)
    assert parsed.verify(PASSWORD.encode()) and not parsed.verify(b"wrong")
    assert parsed.encode() == HASH and PASSWORD not in repr(parsed)
    assert hash_password(PASSWORD, log_n=10) != HASH  # fresh salt every time
    for bad in ("$2b$10$" + "a" * 53, HASH.replace("ln=10", "ln=21"),
                HASH.replace("p=1", "p=9"), HASH.replace("ln=10,r=8", "ln=20,r=32"), ""):
        with pytest.raises(PasswordHashError):
            parse_scrypt_hash(bad)


def test_the_operator_hash_verifies_on_the_vm() -> None:
    fields = asyncio.run(_hash_fields(PASSWORD))
    assert set(fields) == {"scryptHash", "passwordSha256"}
    parsed = parse_scrypt_hash(fields["scryptHash"])
    assert parsed.log_n == password_hash.DEFAULT_LOG_N
    assert parsed.verify(PASSWORD.encode()) and not parsed.verify(b"x")


class MergingKube:
    """Just the Secret calls ensure_access makes; updates merge as the apiserver's do."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data
        self.updates = 0

    async def read_secret(self, namespace: str, name: str) -> SecretData:
        return SecretData(data=dict(self.data), resource_version="1",
                          owner_uids=("uid-1",), labels={})

    async def replace_secret_data(self, namespace: str, name: str,
                                  data: dict[str, str]) -> None:
        self.updates += 1
        self.data.update(data)


def test_an_access_secret_from_before_scrypt_gets_its_hash_once() -> None:
    kube = MergingKube({"username": "agent", "password": PASSWORD,
                        "passwordSha256": _fingerprint(PASSWORD),
                        "bcryptHash": "$2b$10$" + "a" * 53})
    scope = cast(Scope, SimpleNamespace(
        runtime=SimpleNamespace(kube=kube), ref=SimpleNamespace(
            name="demo", namespace="default", uid="uid-1"),
        secret_name=lambda suffix: f"demo-{suffix}"))
    first = asyncio.run(ensure_access(scope))
    assert parse_scrypt_hash(first.scrypt_hash).verify(PASSWORD.encode())
    again = asyncio.run(ensure_access(scope))
    # Stable: a new salt on every reconcile would re-deliver secrets and end sessions.
    assert again.scrypt_hash == first.scrypt_hash and kube.updates == 1


# -- Origin policy ------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "allowed"), [
    ({}, True),
    ({"origin": OTHER}, True),  # a plain GET is a navigation or a read: no state changes
    ({"method": "POST"}, True),  # curl: no Origin, no Sec-Fetch-Site
    ({"method": "POST", "origin": f"https://{HOST}"}, True),
    ({"method": "POST", "origin": f"https://{HOST.upper()}"}, True),
    ({"method": "POST", "origin": f"https://{HOST}", "fetch_site": "same-origin"}, True),
    ({"method": "POST", "fetch_site": "none"}, True),
    ({"method": "POST", "origin": OTHER}, False),
    ({"method": "POST", "origin": "null"}, False),
    ({"method": "POST", "origin": f"http://{HOST}"}, False),  # another scheme
    ({"method": "POST", "origin": f"https://{HOST}:8443"}, False),  # another port
    ({"method": "DELETE", "fetch_site": "same-site"}, False),
    ({"method": "PUT", "origin": f"https://{HOST}", "fetch_site": "cross-site"}, False),
    ({"upgrade": "websocket", "origin": OTHER}, False),
    ({"upgrade": "websocket", "fetch_site": "same-site"}, False),
    ({"upgrade": "websocket", "origin": f"https://{HOST}"}, True),
    ({"method": "OPTIONS", "origin": OTHER}, True),
])
def test_origin_policy(changes: dict[str, Any], allowed: bool) -> None:
    assert origin_allowed(request(**changes)) is allowed


def test_client_keys_group_ipv6_by_64() -> None:
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:203.0.113.7") == client_key("203.0.113.7") == "203.0.113.7"


# -- the limiter, sessions, helpers --------------------------------------------------------

def test_limiter_counts_attempts_up_front_and_forgives_successes() -> None:
    clock = FakeClock(0.0)
    limiter = AttemptLimiter(clock, limit=3, window=60.0, max_clients=2)
    assert [limiter.begin("a") for _ in range(3)] == [None, None, None]
    assert limiter.begin("a") == 60
    limiter.succeeded("a")
    assert limiter.begin("a") is None  # the success was given back
    assert limiter.begin("b") is None  # other clients are not affected
    clock.now += 61
    assert [limiter.begin("a") for _ in range(4)] == [None, None, None, 60]
    limiter.begin("b")
    limiter.begin("c")  # the table stays bounded: the least recent client is forgotten
    assert limiter.begin("a") is None


def test_sessions_are_bound_to_host_password_and_time() -> None:
    signer = SessionSigner(b"k" * 32)
    token = signer.issue(HOST, HASH, 1000.0)
    assert signer.valid(token, HOST, HASH, 1000.0 + SESSION_SECONDS - 1)
    assert not signer.valid(token, HOST, HASH, 1000.0 + SESSION_SECONDS)
    assert not signer.valid(token, f"3000.{HOST}", HASH, 1000.0)
    assert not signer.valid(token, HOST, hash_password(PASSWORD, log_n=10), 1000.0)
    assert not SessionSigner(b"other" * 8).valid(token, HOST, HASH, 1000.0)
    expiry, nonce, mac = token.split(".")
    assert not signer.valid(f"{int(expiry) + 3600}.{nonce}.{mac}", HOST, HASH, 1000.0)
    for junk in ("", "x", "1.2", "..", "99999999999999.a.b"):
        assert not signer.valid(junk, HOST, HASH, 1000.0)


def test_safe_next_and_cookie_parsing() -> None:
    assert safe_next("/a/b?c=1") == "/a/b?c=1"
    for bad in (None, "", "https://evil.test/", "//evil.test/", "/\\evil.test",
                "/.agentspaces/login?next=/", "/\nSet-Cookie: x"):
        assert safe_next(bad) == "/"
    assert session_cookies(f"a=1; {COOKIE}=x; {COOKIE}=\"y\"; b={COOKIE}", COOKIE) == ["x", "y"]


# -- the forward-auth decision ------------------------------------------------------------

def test_no_credentials_browsers_get_the_login_page_scripts_a_basic_challenge(
        web: WebAuth) -> None:
    page = web.check(request(uri="/p?q=1", accept="text/html,*/*"), ACCOUNT)
    assert page.status == 401 and b'value="/p?q=1"' in page.body
    assert "WWW-Authenticate" not in dict(page.headers)
    assert ("X-Frame-Options", "DENY") in page.headers
    navigation = web.check(request(accept="*/*", fetch_mode="navigate"), ACCOUNT)
    assert navigation.status == 401 and b"<form" in navigation.body
    script = web.check(request(), ACCOUNT)
    assert script.status == 401 and dict(script.headers)["WWW-Authenticate"].startswith("Basic")
    # A page's fetch or WebSocket gets no challenge either: the browser would prompt.
    for changes in ({"fetch_mode": "cors", "fetch_site": "same-origin"},
                    {"fetch_mode": "websocket", "upgrade": "websocket"},
                    {"method": "POST", "accept": "text/html"}):
        answer = web.check(request(**changes), ACCOUNT)
        assert answer.status == 401 and "WWW-Authenticate" not in dict(answer.headers)
        assert b"<form" not in answer.body
    assert web.check(request(), None).status == 503


def test_cross_origin_is_refused_before_any_credential_is_looked_at(
        web: WebAuth, checks: list[int]) -> None:
    answer = web.check(request(method="POST", origin=OTHER,
                               authorization=basic("agent", PASSWORD)), ACCOUNT)
    assert answer.status == 403 and not checks


def test_basic_auth_is_verified_once_then_cached(web: WebAuth, checks: list[int]) -> None:
    header = basic("agent", PASSWORD)
    assert web.check(request(authorization=header), ACCOUNT).status == 204
    assert web.check(request(authorization=header, client="198.51.100.1"), ACCOUNT).status == 204
    assert len(checks) == 1
    # A rotated password misses the cache and is checked against the new hash.
    rotated = Account("agent", hash_password("new one", log_n=10))
    assert web.check(request(authorization=header), rotated).status == 401
    assert len(checks) == 2


def test_unknown_users_and_junk_cost_no_hashing(web: WebAuth, checks: list[int]) -> None:
    for header in (basic("root", PASSWORD), "Basic !!!", "Bearer x", basic("agent", "")[:-2]):
        assert web.check(request(authorization=header), ACCOUNT).status == 401
    assert not checks


def test_concurrent_guesses_stop_at_the_limit_and_never_lock_out_valid_users(
        web: WebAuth, clocks: Clocks, checks: list[int]) -> None:
    good = basic("agent", PASSWORD)
    assert web.check(request(authorization=good), ACCOUNT).status == 204
    checks.clear()
    codes: list[int] = []
    barrier = threading.Barrier(30)

    def guess(n: int) -> None:
        barrier.wait(timeout=10)
        codes.append(web.check(request(authorization=basic("agent", f"g{n}")), ACCOUNT).status)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(codes) == [401] * 10 + [429] * 20 and len(checks) == 10
    limited = web.check(request(authorization=basic("agent", "g")), ACCOUNT)
    assert limited.status == 429 and dict(limited.headers)["Retry-After"] == "60"
    # Same address: the cached header and a session still work; the limit only stops checks.
    assert web.check(request(authorization=good), ACCOUNT).status == 204
    # Another address is not affected at all: its password is checked and accepted.
    login = web.login(request(method="POST", client="198.51.100.9"),
                      b"password=correct+horse", ACCOUNT)
    assert login.status == 303 and len(checks) == 11
    clocks.advance(61)
    assert web.check(request(authorization=basic("agent", "g")), ACCOUNT).status == 401


def test_login_sets_a_host_only_strict_session(web: WebAuth, clocks: Clocks) -> None:
    form = f"password={PASSWORD.replace(' ', '+')}&next=%2Fprojects".encode()
    assert web.login(request(method="POST", origin=OTHER), form, ACCOUNT).status == 403
    wrong = web.login(request(method="POST"), b"password=nope", ACCOUNT)
    assert wrong.status == 401 and b"Wrong password." in wrong.body
    ok = web.login(request(method="POST", origin=f"https://{HOST}"), form, ACCOUNT)
    headers = dict(ok.headers)
    assert ok.status == 303 and headers["Location"] == "/projects"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{SECURE_COOKIE}=")
    assert cookie.endswith("; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict; Secure")
    token = cookie.split(";")[0].partition("=")[2]
    with_session = request(method="POST", cookie=f"{SECURE_COOKIE}={token}",
                           origin=f"https://{HOST}")
    assert web.check(with_session, ACCOUNT).status == 204
    assert web.check(request(cookie=f"{SECURE_COOKIE}={token}", host=f"3000.{HOST}"),
                     ACCOUNT).status == 401
    clocks.advance(SESSION_SECONDS)
    assert web.check(with_session, ACCOUNT).status == 401
    # Over plain HTTP (the sandbox) the cookie cannot be Secure or __Host-.
    plain = web.login(request(method="POST", scheme="http"), form, ACCOUNT)
    assert dict(plain.headers)["Set-Cookie"].startswith(f"{COOKIE}=")
    assert "Secure" not in dict(plain.headers)["Set-Cookie"]
    page = web.login(request(uri="/web/login?next=/x"), b"", ACCOUNT)
    assert page.status == 200 and b'value="/x"' in page.body
