"""Share-link tokens: what they grant and every way a bad one is refused."""

from __future__ import annotations

from agentspaces_vm import share_links as sl

KEY = sl.decode_key(sl.new_key())
OTHER = sl.decode_key(sl.new_key())
HOST = "demo.ws.example.com"
NOW = 1_800_000_000


def test_a_token_grants_its_port_until_it_expires() -> None:
    assert KEY is not None
    token = sl.mint(KEY, HOST, 8080, NOW + 60, may_wake=True)
    assert sl.verify(KEY, token, HOST, 8080, NOW) == sl.ShareGrant(8080, NOW + 60, True)
    assert sl.verify(KEY, token, HOST.upper(), 8080, NOW) is not None
    assert sl.verify(KEY, token, HOST, 8080, NOW + 60) is None  # expired


def test_a_token_opens_no_other_port_host_or_workspace() -> None:
    assert KEY is not None and OTHER is not None
    token = sl.mint(KEY, HOST, 8080, NOW + 60, may_wake=False)
    assert sl.verify(KEY, token, HOST, 3000, NOW) is None
    assert sl.verify(KEY, token, "other.ws.example.com", 8080, NOW) is None
    assert sl.verify(OTHER, token, HOST, 8080, NOW) is None  # rotated key: revoked
    grant = sl.verify(KEY, token, HOST, 8080, NOW)
    assert grant is not None and grant.may_wake is False


def test_tampered_tokens_are_refused() -> None:
    assert KEY is not None
    token = sl.mint(KEY, HOST, 8080, NOW + 60, may_wake=False)
    version, port, expires, flag, sig = token.split(".")
    for bad in (f"{version}.{port}.{int(expires) + 3600}.{flag}.{sig}",  # longer life
                f"{version}.{port}.{expires}.w.{sig}",  # may now wake
                f"{version}.3000.{expires}.{flag}.{sig}",
                token[:-1] + ("A" if token[-1] != "A" else "B"),
                token + "A", "", "v1", "x" * 5000):
        assert sl.verify(KEY, bad, HOST, int(port), NOW) is None, bad


def test_keys_round_trip_and_bad_keys_are_none() -> None:
    text = sl.new_key()
    assert sl.decode_key(text) is not None and len(sl.decode_key(text) or b"") == 32
    assert sl.decode_key("short") is None
    assert sl.decode_key("!!!") is None
    assert sl.link("https://8080.demo.ws.example.com", "t") == (
        "https://8080.demo.ws.example.com/?agentspaces-share=t")
