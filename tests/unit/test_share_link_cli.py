"""`agentspaces share-link` over a fake cluster: the link it prints, and what it says
when something is missing or not allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agentspaces.api.share_links import KEY_FIELD, REVOKE_ANNOTATION
from agentspaces.share_link_cli import CliError, KubeError, create, revoke
from agentspaces_vm import share_links

NOW = 1_800_000_000.0
HOST = "demo-team-a-abcdefghijklm.example.com"
KEY = share_links.new_key()


class FakeCluster:
    def __init__(self) -> None:
        self.workspace: dict[str, Any] | KubeError = {
            "spec": {"access": {"ports": [{"port": 3000, "visibility": "link"},
                                          {"port": 3001}, {"port": 8080,
                                                           "visibility": "public"}]}},
            "status": {"urls": {"workspace": f"https://{HOST}",
                                "ports": f"https://{{port}}.{HOST}"}}}
        self.secret: dict[str, str] | KubeError = {"password": "pw", KEY_FIELD: KEY}
        self.patches: list[tuple[str, str, dict[str, str]]] = []
        self.patch_error: KubeError | None = None

    def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any]:
        if isinstance(self.workspace, KubeError):
            raise self.workspace
        return self.workspace

    def read_secret(self, namespace: str, name: str) -> Mapping[str, str]:
        assert name == "demo-access"
        if isinstance(self.secret, KubeError):
            raise self.secret
        return self.secret

    def annotate_workspace(self, namespace: str, name: str,
                           annotations: Mapping[str, str]) -> None:
        if self.patch_error is not None:
            raise self.patch_error
        self.patches.append((namespace, name, dict(annotations)))


def test_create_prints_a_link_the_vm_accepts() -> None:
    link = create(FakeCluster(), "team-a", "demo", 3000, "7d", True, NOW)
    parts = urlsplit(link.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"https://3000.{HOST}/"
    token = parse_qs(parts.query)[share_links.QUERY_PARAM][0]
    key = share_links.decode_key(KEY)
    assert key is not None
    grant = share_links.verify(key, token, HOST, 3000, NOW)
    assert grant is not None and grant.may_wake and grant.expires == int(NOW) + 7 * 86400
    assert link.expires == grant.expires
    # Signed for the workspace host: it opens no other port.
    assert share_links.verify(key, token, HOST, 3001, NOW) is None


def test_the_sandbox_port_in_the_url_is_kept() -> None:
    cluster = FakeCluster()
    assert not isinstance(cluster.workspace, KubeError)
    cluster.workspace["status"]["urls"] = {"workspace": f"http://{HOST}:18080",
                                           "ports": f"http://{{port}}.{HOST}:18080"}
    url = create(cluster, "team-a", "demo", 3000, "1h", False, NOW).url
    assert url.startswith(f"http://3000.{HOST}:18080/?{share_links.QUERY_PARAM}=v1.3000.")


def _error(cluster: FakeCluster, port: int = 3000, lifetime: str = "24h") -> str:
    with pytest.raises(CliError) as err:
        create(cluster, "team-a", "demo", port, lifetime, False, NOW)
    return str(err.value)


def test_clear_errors() -> None:
    assert "port 3001 of demo is private; share links open only ports with visibility " \
        "link" in _error(FakeCluster(), port=3001)
    assert "port 8080 of demo is public" in _error(FakeCluster(), port=8080)
    assert "port 4000 of demo is private" in _error(FakeCluster(), port=4000)
    assert _error(FakeCluster(), lifetime="31d").startswith("--for: 31d is longer than")
    assert "--for: 'soon' is not a duration" in _error(FakeCluster(), lifetime="soon")

    cluster = FakeCluster()
    cluster.workspace = KubeError(404, "Not Found")
    assert _error(cluster) == "Workspace demo not found in namespace team-a"
    cluster.workspace = KubeError(403, "Forbidden")
    assert _error(cluster).startswith("you may not get Workspace demo in namespace team-a "
                                      "(check with `kubectl auth can-i get workspaces")
    cluster.workspace = KubeError(401, "Unauthorized")
    assert "refused your credentials" in _error(cluster)

    cluster = FakeCluster()
    cluster.secret = KubeError(404, "Not Found")
    assert _error(cluster) == "Secret demo-access not found in namespace team-a"
    cluster.secret = KubeError(403, "Forbidden")
    assert "you may not get Secret demo-access" in _error(cluster)
    assert "kubectl auth can-i get secrets -n team-a" in _error(cluster)
    cluster.secret = {"password": "pw"}
    assert "has no shareLinkKey yet" in _error(cluster)
    cluster.secret = {KEY_FIELD: "not-a-key"}
    assert "shareLinkKey is not a valid key" in _error(cluster)

    cluster = FakeCluster()
    assert not isinstance(cluster.workspace, KubeError)
    del cluster.workspace["status"]
    assert "demo has no URL yet" in _error(cluster)


def test_revoke_sets_a_new_annotation_value() -> None:
    cluster = FakeCluster()
    assert revoke(cluster, "team-a", "demo", NOW) == str(int(NOW))
    assert cluster.patches == [("team-a", "demo", {REVOKE_ANNOTATION: str(int(NOW))})]
    cluster.patch_error = KubeError(403, "Forbidden")
    with pytest.raises(CliError, match="you may not patch Workspace demo"):
        revoke(cluster, "team-a", "demo", NOW + 1)
