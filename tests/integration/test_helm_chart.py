"""The Helm chart (charts/agentspaces) with the real helm (scripts/build-helm.sh): it
lints, it renders what manifests/ installs object for object (the wake gateway
included), its operator and gateway RBAC is the manifests' least-privilege RBAC under
any values, values it cannot honour fail the render, and the real apiserver accepts what
it renders (a server-side dry run against the CRDs), refusing a class its schema
forbids."""

from __future__ import annotations

import copy
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Kubectl

pytestmark = pytest.mark.integration
CHART = REPO / "charts" / "agentspaces"
MANIFESTS = REPO / "manifests"
SYSTEM = "agentspaces-system"
ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")
Doc = dict[str, Any]


class Helm:
    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        # Helm's own config, cache and data directories, away from the user's.
        self.env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], capture_output=True, text=True,
                              env=self.env, timeout=60, check=False)

    def template(self, values: Doc | None = None, namespace: str = SYSTEM,
                 tmp: Path | None = None) -> str:
        args = ["template", "agentspaces", str(CHART), "--namespace", namespace]
        if values is not None:
            assert tmp is not None
            path = tmp / f"values-{uuid.uuid4().hex[:6]}.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["--values", str(path)]
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def docs(self, values: Doc | None = None, tmp: Path | None = None,
             namespace: str = SYSTEM) -> list[Doc]:
        return [d for d in yaml.safe_load_all(self.template(values, namespace, tmp)) if d]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    """The pinned helm, built once from Go modules and cached (AGENTSPACES_HELM skips it)."""
    built = subprocess.run(["bash", str(REPO / "scripts" / "build-helm.sh")],
                           stdout=subprocess.PIPE, text=True, check=False)
    assert built.returncode == 0, "scripts/build-helm.sh failed; see its output above"
    yield Helm(built.stdout.strip().splitlines()[-1], tmp_path_factory.mktemp("helm"))


def _key(doc: Doc) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def _manifest_docs() -> list[Doc]:
    """What `kubectl apply -k manifests/` and then manifests/dashboard.yaml install, CRDs
    aside (the chart's crds/ holds the same file, tests/unit/test_packaging.py)."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = [r for r in kustomization["resources"] if not r.startswith("../")]
    files.append("dashboard.yaml")
    return [d for f in files for d in yaml.safe_load_all((MANIFESTS / f).read_text()) if d]


def _commented_proxy_rbac() -> list[Doc]:
    """The impersonation RBAC manifests/dashboard.yaml carries, commented, for proxy mode."""
    text = (MANIFESTS / "dashboard.yaml").read_text()
    block = text.split("# --- only for --auth proxy", 1)[1].split("\n", 1)[1]
    lines = [line.removeprefix("#").removeprefix(" ") for line in block.splitlines()]
    return [d for d in yaml.safe_load_all("\n".join(lines)) if d]


def _normalized(doc: Doc, manifest: Doc) -> Doc:
    """`doc` (rendered) with the chart's extra labels gone, once the manifest's are
    checked to be among them."""
    out = copy.deepcopy(doc)
    labels = out["metadata"].pop("labels", {}) or {}
    wanted = manifest["metadata"].get("labels", {}) or {}
    assert wanted.items() <= labels.items(), (_key(doc), wanted, labels)
    return out


def _unlabelled(manifest: Doc) -> Doc:
    out = copy.deepcopy(manifest)
    out["metadata"].pop("labels", None)
    for container in out.get("spec", {}).get("template", {}).get("spec", {}).get(
            "containers", []):
        # The chart always states the pull policy; IfNotPresent is the default here.
        container.setdefault("imagePullPolicy", "IfNotPresent")
    if out["kind"] == "Service":
        out["spec"].setdefault("type", "ClusterIP")  # the chart states it too
    return out


def _compare(rendered: list[Doc], manifests: list[Doc]) -> None:
    by_key = {_key(d): d for d in rendered}
    assert sorted(by_key) == sorted(_key(m) for m in manifests)
    for manifest in manifests:
        assert _normalized(by_key[_key(manifest)], manifest) == _unlabelled(manifest), \
            _key(manifest)


def test_chart_lints(helm: Helm, tmp_path: Path) -> None:
    result = helm.run("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(_busy_values("lint")))
    result = helm.run("lint", "--strict", str(CHART), "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_is_what_the_manifests_install(helm: Helm, tmp_path: Path) -> None:
    manifests = _manifest_docs()
    # With the Namespace and the dashboard (both off by default), object for object.
    _compare(helm.docs({"namespace": {"create": True},
                        "dashboard": {"enabled": True,
                                      "publicUrl": "https://dashboard.example.com"}}, tmp_path),
             manifests)
    # The defaults: the kustomization's objects without the Namespace.
    default = {_key(d) for d in helm.docs()}
    assert default == {_key(m) for m in manifests
                       if m["kind"] != "Namespace" and "dashboard" not in m["metadata"]["name"]}
    # gateway.enabled: false leaves out exactly manifests/gateway.yaml's objects.
    gateway = {_key(d) for d in yaml.safe_load_all((MANIFESTS / "gateway.yaml").read_text())}
    assert {_key(d) for d in helm.docs({"gateway": {"enabled": False}}, tmp_path)} == \
        default - gateway
    assert gateway < default
    # Proxy mode adds exactly the impersonation RBAC the manifest documents.
    proxy = helm.docs({"dashboard": {"enabled": True, "auth": "proxy"}}, tmp_path)
    impersonation = [d for d in proxy if "impersonate" in d["metadata"]["name"]]
    assert len(impersonation) == 2
    _compare(impersonation, _commented_proxy_rbac())


def _rbac(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in (*ROLE_KINDS, *BINDING_KINDS, "ServiceAccount")]


def test_rbac_is_exactly_the_manifests_rbac(helm: Helm, tmp_path: Path) -> None:
    """The least-privilege RBAC tests/integration/test_manifests_rbac.py proves rule by
    rule, the operator's and the wake gateway's, is what the chart grants: equal by
    default, never a role or rule more with any values (confined Secret rights bind the
    same ClusterRoles with RoleBindings)."""
    gateway = [d for d in yaml.safe_load_all((MANIFESTS / "gateway.yaml").read_text())
               if d["kind"] in (*ROLE_KINDS, *BINDING_KINDS, "ServiceAccount")]
    assert len(gateway) == 5
    shipped = [*yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()), *gateway]
    _compare(_rbac(helm.docs()), shipped)

    allowed_roles = {_key(r): r for r in [*shipped, *_commented_proxy_rbac()]
                     if r["kind"] in ROLE_KINDS}
    for values in ({}, _busy_values("rbac"),
                   {"rbac": {"secrets": {"clusterWide": False, "namespaces": ["a", "b"]}}},
                   {"gateway": {"enabled": False}}):
        docs = helm.docs(values, tmp_path, namespace=SYSTEM)
        for role in (d for d in docs if d["kind"] in ROLE_KINDS):
            key = (role["kind"], role["metadata"].get("namespace", ""), role["metadata"]["name"])
            if role["kind"] == "Role":
                # The operator's own Role lives in whatever namespace it runs in.
                key = ("Role", SYSTEM, role["metadata"]["name"])
            assert key in allowed_roles, f"a role the manifests do not have: {key}"
            assert role["rules"] == allowed_roles[key]["rules"], key
        for binding in (d for d in docs if d["kind"] in BINDING_KINDS):
            assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in {
                (k, n) for k, _, n in allowed_roles}, binding["metadata"]["name"]

    confined = helm.docs({"rbac": {"secrets": {"clusterWide": False,
                                               "namespaces": ["team-a", SYSTEM]}}}, tmp_path)
    for secrets_role in ("agentspaces-operator-secrets", "agentspaces-gateway-secrets"):
        secret_bindings = {(d["kind"], d["metadata"].get("namespace", "")) for d in confined
                           if d.get("roleRef", {}).get("name") == secrets_role}
        assert secret_bindings == {("RoleBinding", SYSTEM), ("RoleBinding", "team-a")}, \
            secrets_role
    # Without the gateway, none of its RBAC.
    assert not [d for d in helm.docs({"gateway": {"enabled": False}}, tmp_path)
                if "gateway" in d["metadata"]["name"]]


def _busy_values(tag: str, namespace: str = "platform-ws") -> Doc:
    """Every value away from its default."""
    return {
        "image": {"repository": "registry.example.com/team/agentspaces", "tag": "1.2.3",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "namespace": {"name": namespace, "create": True},
        "replicas": 0,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"memory": "1Gi"}},
        "env": {"AGENTSPACES_POLL_INTERVAL": "15s", "AGENTSPACES_AGENT_CONCURRENCY": 40},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/team": "platform"},
        "metrics": {"enabled": False},
        "rbac": {"secrets": {"clusterWide": False, "namespaces": [namespace]}},
        "dashboard": {"enabled": True, "auth": "proxy", "publicUrl": "https://ws.example.com",
                      "service": {"port": 8080}},
        "gateway": {
            "caddy": {"image": {"repository": "registry.example.com/mirror/caddy",
                                "tag": "2.11.8", "pullPolicy": "Always"},
                      "resources": {"requests": {"cpu": "50m", "memory": "96Mi"},
                                    "limits": {"memory": "384Mi"}}},
            "resources": {"requests": {"cpu": "30m", "memory": "80Mi"},
                          "limits": {"memory": "320Mi"}},
            "service": {"annotations": {"load-balancer.hetzner.cloud/location": "fsn1"},
                        "loadBalancerIP": "203.0.113.10"}},
        "secrets": {
            "hetzner": {"token": "hz-token"},
            "r2": {"name": "r2-creds", "accessKeyId": "AKID", "secretAccessKey": "s3cr3t"},
            "backupEncryption": {"key": "a2V5a2V5a2V5", "previousKey": "b2xka2V5"},
        },
        "workspaceClasses": [
            {"name": f"{tag}-fsn1", "spec": {
                "server": {"type": "cx23", "location": "fsn1", "image": "ubuntu-24.04"},
                "dns": {"zoneName": "example.com", "baseDomain": "ws.example.com"},
                "storage": {"endpoint": "https://acct.r2.cloudflarestorage.com",
                            "bucket": "backups"}}},
            {"name": f"{tag}-nbg1", "spec": {
                "hetzner": {"tokenSecretRef": {"name": "other", "namespace": "elsewhere"}},
                "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf2"}}}},
        ],
    }


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [_key(d) for d in docs])
    return found[0]


def test_non_default_values_render_where_they_belong(helm: Helm, tmp_path: Path) -> None:
    docs = helm.docs(_busy_values("t"), tmp_path)
    assert {d["metadata"].get("namespace", "platform-ws") for d in docs
            if d["kind"] not in ("Namespace", "WorkspaceClass", "ClusterRole",
                                 "ClusterRoleBinding")} == {"platform-ws"}
    ns = _one(docs, "Namespace", "platform-ws")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    operator = _one(docs, "Deployment", "agentspaces-operator")
    assert operator["spec"]["replicas"] == 0
    pod = operator["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "platform"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "ops"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/team/agentspaces:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"]["limits"] == {"memory": "1Gi"}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env == {"AGENTSPACES_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                   "AGENTSPACES_PEERING": "agentspaces",
                   "POD_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
                   "AGENTSPACES_METRICS_PORT": "off",
                   "AGENTSPACES_POLL_INTERVAL": "15s", "AGENTSPACES_AGENT_CONCURRENCY": "40"}
    assert [p["name"] for p in container["ports"]] == ["health"]

    dashboard = _one(docs, "Deployment", "agentspaces-dashboard")["spec"]["template"]["spec"]
    args = dashboard["containers"][0]["args"]
    assert args[args.index("--auth") + 1] == "proxy"
    assert args[args.index("--public-url") + 1] == "https://ws.example.com"
    assert dashboard["containers"][0]["image"] == container["image"]
    assert _one(docs, "Service", "agentspaces-dashboard")["spec"]["ports"][0]["port"] == 8080

    gateway = _one(docs, "Deployment", "agentspaces-gateway")["spec"]["template"]["spec"]
    assert gateway["imagePullSecrets"] == [{"name": "regcred"}]
    caddy, app = gateway["containers"]
    assert (caddy["image"], caddy["imagePullPolicy"]) == (
        "registry.example.com/mirror/caddy:2.11.8", "Always")
    assert caddy["resources"]["limits"] == {"memory": "384Mi"}
    assert (app["image"], app["imagePullPolicy"]) == (container["image"], "Always")
    assert app["resources"]["limits"] == {"memory": "320Mi"}
    service = _one(docs, "Service", "agentspaces-gateway")
    assert service["metadata"]["annotations"] == {"load-balancer.hetzner.cloud/location": "fsn1"}
    assert service["spec"]["loadBalancerIP"] == "203.0.113.10"
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"

    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert sorted(secrets) == ["backup-encryption", "hetzner", "r2-creds"]  # no cloudflare
    assert secrets["r2-creds"]["stringData"] == {"accessKeyId": "AKID",
                                                 "secretAccessKey": "s3cr3t"}
    assert set(secrets["backup-encryption"]["stringData"]) == {"key", "previousKey"}
    for secret in secrets.values():
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    fsn1 = _one(docs, "WorkspaceClass", "t-fsn1")["spec"]
    assert fsn1["hetzner"] == {"tokenSecretRef": {"name": "hetzner"}}
    assert fsn1["dns"]["tokenSecretRef"] == {"name": "cloudflare"}  # an existing Secret
    assert fsn1["storage"]["credentialsSecretRef"] == {"name": "r2-creds"}
    assert fsn1["encryption"] == {"keySecretRef": {"name": "backup-encryption"}}
    nbg1 = _one(docs, "WorkspaceClass", "t-nbg1")["spec"]
    assert nbg1["hetzner"]["tokenSecretRef"] == {"name": "other", "namespace": "elsewhere"}
    assert nbg1["dns"]["tokenSecretRef"] == {"name": "cf2"}
    assert "storage" not in nbg1 and "encryption" not in nbg1


def test_metrics_port_moves_the_server_the_port_and_the_annotations(
        helm: Helm, tmp_path: Path) -> None:
    docs = helm.docs({"metrics": {"port": 9191},
                      "podAnnotations": {"example.com/team": "platform",
                                         "prometheus.io/path": "/mine"}}, tmp_path)
    pod = _one(docs, "Deployment", "agentspaces-operator")["spec"]["template"]
    # The chart's annotations join the pod's own, which win.
    assert pod["metadata"]["annotations"] == {
        "example.com/team": "platform", "prometheus.io/scrape": "true",
        "prometheus.io/port": "9191", "prometheus.io/path": "/mine"}
    container = pod["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9191} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["AGENTSPACES_METRICS_HOST"], env["AGENTSPACES_METRICS_PORT"]) == (
        "0.0.0.0", "9191")


@pytest.mark.parametrize(("kind", "policy"), [("NodePort", "Local"), ("ClusterIP", None)])
def test_gateway_service_types(helm: Helm, tmp_path: Path, kind: str,
                               policy: str | None) -> None:
    """externalTrafficPolicy only where the apiserver allows it (and the client address
    can be kept): NodePort and LoadBalancer."""
    docs = helm.docs({"gateway": {"service": {"type": kind}}}, tmp_path)
    spec = _one(docs, "Service", "agentspaces-gateway")["spec"]
    assert spec["type"] == kind and spec.get("externalTrafficPolicy") == policy
    assert "loadBalancerIP" not in spec


@pytest.mark.parametrize(("values", "message"), [
    ({"gateway": {"service": {"type": "ExternalName"}}}, "gateway.service.type"),
    ({"gateway": {"service": {"type": "ClusterIP", "loadBalancerIP": "203.0.113.10"}}},
     "gateway.service.loadBalancerIP"),
    ({"dashboard": {"enabled": True, "auth": "basic"}}, "dashboard.auth"),
    ({"env": {"AGENTSPACES_NAMESPACE": "x"}}, "namespace.name"),
    ({"env": {"AGENTSPACES_METRICS_PORT": "1"}}, "metrics.port"),
    ({"env": {"AGENTSPACES_PEERING": "other"}}, "set by the chart"),
    ({"workspaceClasses": [{"spec": {}}]}, "needs a name"),
], ids=["gateway-service-type", "gateway-lb-ip", "dashboard-auth",
        "namespace-env", "metrics-env", "peering-env", "class-name"])
def test_values_it_cannot_honour_fail_the_render(helm: Helm, tmp_path: Path,
                                                 values: Doc, message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm.run("template", "agentspaces", str(CHART), "--values", str(path))
    assert result.returncode != 0 and message in result.stderr, result.stderr


def _dry_run(kubectl: Kubectl, manifest: str, *extra: str) -> tuple[int, str]:
    code, out, err = kubectl.run("apply", "--dry-run=server", *extra, "-f", "-",
                                 input=manifest)
    return code, out + err


def test_real_apiserver_accepts_the_render(helm: Helm, kubectl: Kubectl, namespace: str,
                                           tmp_path: Path) -> None:
    """`helm template | kubectl apply --dry-run=server -f -`: every object passes the
    apiserver's validation and admission, the WorkspaceClasses the CRD's schema."""
    code, out = _dry_run(kubectl, (CHART / "crds" / "agentspaces.dev.yaml").read_text(),
                         "--server-side")
    assert code == 0, out

    code, out = _dry_run(kubectl, helm.template(namespace=namespace))
    assert code == 0, out
    assert "deployment.apps/agentspaces-operator" in out and "(server dry run)" in out
    for name in ("deployment.apps/agentspaces-gateway", "service/agentspaces-gateway",
                 "configmap/agentspaces-gateway-caddy", "serviceaccount/agentspaces-gateway"):
        assert f"{name} created (server dry run)" in out, out
    for name in ("agentspaces-gateway", "agentspaces-gateway-secrets"):
        assert f"clusterrole.rbac.authorization.k8s.io/{name} " in out, out

    # The gateway behind a ClusterIP Service (no externalTrafficPolicy: the apiserver
    # refuses it there).
    cluster_ip = {"gateway": {"service": {"type": "ClusterIP"}}}
    code, out = _dry_run(kubectl, helm.template(cluster_ip, namespace=namespace, tmp=tmp_path))
    assert code == 0 and "service/agentspaces-gateway created (server dry run)" in out, out

    tag = namespace
    busy = helm.template(_busy_values(tag, namespace), namespace=namespace, tmp=tmp_path)
    code, out = _dry_run(kubectl, busy)
    assert code == 0, out
    for name in ("agentspaces-dashboard", "agentspaces-gateway", f"{tag}-fsn1", f"{tag}-nbg1",
                 "r2-creds"):
        assert f"/{name} created (server dry run)" in out, out

    # The dry run does validate: a class the CRD's schema refuses is refused.
    bad = _busy_values(tag, namespace)
    bad["workspaceClasses"][0]["spec"]["server"]["type"] = "not a server type"
    code, out = _dry_run(kubectl, helm.template(bad, namespace=namespace, tmp=tmp_path))
    assert code != 0 and f"{tag}-fsn1" in out, out
