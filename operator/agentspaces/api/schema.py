"""The one source of truth for the Workspace and WorkspaceClass schemas.

`crds/*.yaml` is generated from this module (`agentspaces crds > ...`, see the
README) and a unit test fails when the checked-in files drift from it. The typed
views in `api.types` read exactly the fields declared here.
"""

from __future__ import annotations

from typing import Any

GROUP = "agentspaces.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Schema = dict[str, Any]

# Go-style durations as accepted by CEL's duration(): "90s", "30m", "1h30m".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# https://host/path, ssh://git@host/path or scp-style git@host:path
REPOSITORY_URL_PATTERN = (
    r"^(https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+"
    r"|ssh://[A-Za-z0-9._-]+@[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+"
    r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-]+)$"
)
# Hetzner server type names: cx23, cpx32, cax11, ccx13 ... The live list is checked
# at reconcile time (ServerTypeNotFound); the pattern catches typos at admission.
SERVER_TYPE_PATTERN = r"^(cx|cpx|cax|ccx)[0-9]{2,3}$"
# An image name ("ubuntu-24.04") or a numeric id (any snapshot or backup in the project).
IMAGE_PATTERN = r"^[a-z0-9][a-z0-9.-]*$"
LOCATIONS = ["fsn1", "nbg1", "hel1", "ash", "hil", "sin"]
SSH_KEY_PATTERN = (
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521"
    r"|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/=]+( .*)?$"
)
# Ports the VM's own services listen on (SSH, Caddy's HTTP/HTTPS and admin API, the
# CloudCLI UI, the agent's local listener and its default API port): publishing one
# would expose that service, so admission refuses them. vmconfig.claude.reserved_ports
# adds the class's own ports, which the operator checks (a test keeps both in step).
RESERVED_PORTS = (22, 80, 443, 2019, 3001, 9180, 9443)
RESERVED_PORTS_MESSAGE = ("ports " + ", ".join(map(str, RESERVED_PORTS))
                          + " are the VM's own services and cannot be published")
PHASES = ["Pending", "Creating", "Starting", "Running", "Stopping", "Stopped", "Deleting", "Failed"]
AGENT_STATES = ["working", "waiting", "idle", "absent", "unknown"]
STOPPED_BY = ["user", "inactivity", "lifetime"]


def _str(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _duration(description: str, minimum: str = "1s", **extra: Any) -> Schema:
    return {
        "type": "string",
        "description": description,
        "pattern": DURATION_PATTERN,
        "maxLength": 32,
        "x-kubernetes-validations": [
            {
                "rule": f"duration(self) >= duration('{minimum}')",
                "message": f"must be a duration of at least {minimum}, e.g. 30m or 1h30m",
            }
        ],
        **extra,
    }


def _obj(description: str, properties: Schema, required: list[str] | None = None,
         validations: list[Schema] | None = None) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = required
    if validations:
        schema["x-kubernetes-validations"] = validations
    return schema


def secret_key_ref(description: str, default_key: str, namespaced: bool) -> Schema:
    """A reference to one key of a Secret.

    `namespaced` refs (used by the cluster-scoped WorkspaceClass) may name the
    namespace; when omitted the operator's own namespace is used. A future
    tenant-owned, namespaced class reuses this shape with `namespaced=False`.
    """
    properties: Schema = {
        "name": _str("Name of the Secret.", pattern=DNS_SUBDOMAIN_PATTERN, maxLength=253),
        "key": _str("Key within the Secret.", default=default_key, maxLength=253,
                    pattern=r"^[-._a-zA-Z0-9]+$"),
    }
    if namespaced:
        properties["namespace"] = _str(
            "Namespace of the Secret; defaults to the operator's namespace.",
            pattern=DNS_LABEL_PATTERN, maxLength=63)
    return _obj(description, properties, required=["name"])


def _server_settings(defaults: bool) -> Schema:
    def d(value: str) -> dict[str, str]:
        return {"default": value} if defaults else {}

    return _obj(
        "Hetzner Cloud server settings.",
        {
            "type": _str("Server type, e.g. cx23 or cpx32.", pattern=SERVER_TYPE_PATTERN,
                         **d("cx23")),
            "location": _str("Location.", enum=LOCATIONS, **d("fsn1")),
            "image": _str("Image name or id; the VM bootstrap targets Ubuntu 24.04.",
                          maxLength=63, pattern=IMAGE_PATTERN, **d("ubuntu-24.04")),
        },
    )


def _idle_settings(with_defaults: bool) -> Schema:
    def d(value: str) -> dict[str, str]:
        return {"default": value} if with_defaults else {}

    return _obj(
        "When an unattended workspace is stopped (see README: what counts as activity).",
        {
            "timeout": _duration("Stop after this long with no activity.", "1m", **d("30m")),
            "grace": _duration(
                "Extra time after the AI agent stops working before idleness counts.",
                "0s", **d("5m")),
            "agentBusyCap": _duration(
                "An agent reported as working for longer than this counts as idle "
                "(runaway guard).", "1m", **d("6h")),
        },
    )


MCP_SERVER = _obj(
    "One MCP server for Claude Code's .mcp.json.",
    {
        "type": _str("Transport.", enum=["stdio", "http", "sse"], default="stdio"),
        "command": _str("Command for stdio servers.", maxLength=1024),
        "args": {"type": "array", "items": {"type": "string", "maxLength": 1024},
                 "maxItems": 64},
        "url": _str("URL for http/sse servers.", pattern=r"^https?://", maxLength=2048),
        "env": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 4096},
                "maxProperties": 64,
                "description": "Environment for stdio servers (not for secrets)."},
    },
    validations=[
            {"rule": "self.type != 'stdio' || has(self.command)",
             "message": "stdio MCP servers need a command"},
            {"rule": "self.type == 'stdio' || has(self.url)",
             "message": "http and sse MCP servers need a url"},
    ],
)

PORT_ACCESS = _obj(
    "Visibility of one port served at https://{port}.{host}.",
    {
        "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                 "x-kubernetes-validations": [{
                     "rule": f"!(self in {list(RESERVED_PORTS)})",
                     "message": RESERVED_PORTS_MESSAGE}]},
        "visibility": _str("private ports need the workspace password; public ones do not.",
                           enum=["private", "public"], default="private"),
    },
    required=["port"],
)


# The owner's text that travels in the VM's user-data (Hetzner: at most 32 KiB, of
# which the fixed files take about 20). Admission refuses more than this in total; a
# spec that still does not fit (text that compresses badly) is reported by the
# operator as UserDataTooLarge, and no server is created.
USER_TEXT_BUDGET = 10240
_MCP_TEXT = ("(has({s}.command) ? size({s}.command) : 0)"
             " + (has({s}.url) ? size({s}.url) : 0)"
             " + (has({s}.args) ? {s}.args.map(a, size(a)).sum() : 0)"
             " + (has({s}.env) ? {s}.env.map(e, size(e) + size({s}.env[e])).sum() : 0)")
USER_TEXT_RULE = {
    "rule": "(has(self.agent) && has(self.agent.instructions) ? "
            "size(self.agent.instructions) : 0)"
            " + (has(self.sshKeys) ? self.sshKeys.map(k, size(k)).sum() : 0)"
            " + (has(self.agent) && has(self.agent.mcpServers) ? "
            "self.agent.mcpServers.map(n, size(n) + "
            + _MCP_TEXT.format(s="self.agent.mcpServers[n]") + ").sum() : 0)"
            f" <= {USER_TEXT_BUDGET}",
    "message": f"agent.instructions, agent.mcpServers and sshKeys together must stay "
               f"within {USER_TEXT_BUDGET} characters: they travel in the VM's user-data, "
               "which Hetzner limits to 32 KiB",
}


def workspace_spec() -> Schema:
    return _obj(
        "Desired state of a workspace. The operator never writes spec.",
        {
            "className": _str("Name of the WorkspaceClass.", pattern=DNS_SUBDOMAIN_PATTERN,
                              maxLength=253),
            "running": {"type": "boolean", "default": True,
                        "description": "User intent: false stops the workspace (keeps data)."},
            "repository": _obj(
                "Repository cloned into /workspaces.",
                {
                    "url": _str("Clone URL (https or ssh).", pattern=REPOSITORY_URL_PATTERN,
                                maxLength=2048),
                    "ref": _str("Branch, tag or commit; the default branch when empty.",
                                maxLength=255, pattern=r"^[A-Za-z0-9._/-]+$",
                                **{"x-kubernetes-validations": [{
                                    # git would read a leading '-' as an option
                                    "rule": "!self.startsWith('-')",
                                    "message": "repository.ref must not start with '-'"}]}),
                    "credentialsSecretRef": secret_key_ref(
                        "Secret in the workspace's namespace holding a token for private "
                        "repositories.", "token", namespaced=False),
                },
                required=["url"],
            ),
            "devcontainer": _obj(
                "Devcontainer to run. Without either field the repository's own "
                ".devcontainer is used, or a default one when it has none.",
                {
                    "path": _str("Path to devcontainer.json inside the repository.",
                                 maxLength=512, pattern=r"^[A-Za-z0-9._/-]+\.json$"),
                    "image": _str("Container image to use instead of a devcontainer.json.",
                                  maxLength=512),
                },
                validations=[
                    {"rule": "!(has(self.path) && has(self.image))",
                     "message": "set devcontainer.path or devcontainer.image, not both"},
                    {"rule": "!has(self.path) || !self.path.contains('..')",
                     "message": "devcontainer.path must stay inside the repository"},
                ],
            ),
            "server": _server_settings(defaults=False),
            "agent": _obj(
                "The AI coding agent.",
                {
                    "kind": _str("Agent kind.", enum=["claude-code"], default="claude-code"),
                    "apiKeySecretRef": secret_key_ref(
                        "Secret in the workspace's namespace with the Anthropic API key.",
                        "apiKey", namespaced=False),
                    "mcpServers": {"type": "object", "additionalProperties": MCP_SERVER,
                                   "maxProperties": 32,
                                   "description": "MCP servers written to .mcp.json."},
                    "instructions": _str("Extra text appended to the generated CLAUDE.md.",
                                         maxLength=8192),
                },
            ),
            "idle": _idle_settings(with_defaults=False),
            "lifetime": _obj("Hard limits.", {
                "max": _duration("Stop after running this long, active or not.", "1m"),
            }),
            "access": _obj(
                "Who can reach the workspace's URLs.",
                {
                    "auth": _str("Authentication in front of private URLs.", enum=["basic"],
                                 default="basic"),
                    "ports": {"type": "array", "items": PORT_ACCESS, "maxItems": 64,
                              "x-kubernetes-list-type": "map",
                              "x-kubernetes-list-map-keys": ["port"]},
                },
            ),
            "persistence": _obj(
                "Encrypted backups of /workspaces across stop/start.",
                {
                    "enabled": {"type": "boolean", "default": True},
                    "onDelete": _str("What happens to backups and the data key when the "
                                     "Workspace is deleted.", enum=["Delete", "Retain"],
                                     default="Retain"),
                    "schedule": _duration("Also back up every so often while running.", "15m"),
                },
            ),
            "sshKeys": {"type": "array", "maxItems": 32,
                        "description": "OpenSSH public keys allowed to log in to the VM.",
                        "items": {"type": "string", "pattern": SSH_KEY_PATTERN,
                                  "maxLength": 16384}},
        },
        required=["className", "repository"],
        validations=[USER_TEXT_RULE],
    )


def _condition() -> Schema:
    return _obj(
        "A Kubernetes-style condition.",
        {
            "type": _str("Condition type.", maxLength=64),
            "status": _str("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": _str("One CamelCase word.", maxLength=128),
            "message": _str("Human-readable detail.", maxLength=4096),
            "lastTransitionTime": _str("When status last changed.", format="date-time"),
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
        required=["type", "status"],
    )


def workspace_status() -> Schema:
    time = {"type": "string", "format": "date-time"}
    return _obj(
        "Observed state, written only by the operator.",
        {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "phase": _str("Human summary derived from the conditions.", enum=PHASES),
            "conditions": {"type": "array", "items": _condition(),
                           "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]},
            "hostname": _str("DNS label that names this workspace."),
            "server": _obj("The Hetzner server, while one exists.", {
                "id": {"type": "integer", "format": "int64"},
                "name": {"type": "string"},
                "ipv4": {"type": "string"},
                "ipv6": {"type": "string"},
                "type": {"type": "string"},
                "location": {"type": "string"},
                "createdAt": time,
            }),
            "urls": _obj("Where to reach the workspace.", {
                "workspace": {"type": "string"},
                "ui": {"type": "string"},
                "ports": _str("Pattern for port URLs; {port} is the port number."),
                "state": _str("live while running, stopped while stopped.",
                              enum=["live", "stopped"]),
            }),
            "dns": _obj("Records the operator owns.", {
                "zoneId": {"type": "string"},
                "records": {"type": "array", "items": _obj("One owned record.", {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "type": {"type": "string"}, "content": {"type": "string"},
                })},
            }),
            "activity": _obj("What the workspace agent last reported.", {
                "idle": {"type": "boolean"},
                "idleSince": time,
                "lastActivityTime": time,
                "agentState": _str("What the AI agent is doing.", enum=AGENT_STATES),
                "agentStateSince": time,
                "reasons": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            }),
            "backup": _obj("The last committed backup.", {
                "time": time,
                "object": {"type": "string"},
                "size": {"type": "integer", "format": "int64"},
                "sha256": {"type": "string"},
            }),
            "restore": _obj("The backup the running server was restored from.", {
                "object": {"type": "string"},
                "time": time,
                "prefix": _str("A retained workspace's backups to restore from "
                               "(agentspaces.dev/restore-from)."),
            }),
            "agentEndpoint": _obj("How the operator reaches the workspace agent.", {
                "url": {"type": "string"},
                "certificateSHA256": _str("Pinned agent certificate fingerprint."),
            }),
            "pendingBackup": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                              "description": "The backup in flight (no secrets)."},
            "startedAt": time,
            "stoppingSince": time,
            "stoppedAt": time,
            "stoppedBy": _str("Why the workspace stopped.", enum=STOPPED_BY),
            "wakeHandled": _str("Last agentspaces.dev/wake value acted on.", maxLength=256),
            "secretsVersion": _str("Hash of the secrets last delivered to the agent."),
            "failedAgentPolls": {"type": "integer"},
        },
    )


def workspace_class_spec() -> Schema:
    return _obj(
        "Provider credentials and defaults shared by many workspaces.",
        {
            "hetzner": _obj("Hetzner Cloud project.", {
                "tokenSecretRef": secret_key_ref("API token (read & write).", "token",
                                                 namespaced=True),
                "endpoint": _str("API endpoint; change only for the local emulator.",
                                 pattern=r"^https?://", default="https://api.hetzner.cloud/v1"),
            }, required=["tokenSecretRef"]),
            "server": _server_settings(defaults=True),
            "dns": _obj("Cloudflare DNS for the workspace hostnames.", {
                "zoneName": _str("Cloudflare zone, e.g. example.com.",
                                 pattern=DNS_SUBDOMAIN_PATTERN, maxLength=253),
                "baseDomain": _str("Domain the workspace hosts live under; the zone name "
                                   "when empty.", pattern=DNS_SUBDOMAIN_PATTERN, maxLength=253),
                "tokenSecretRef": secret_key_ref("API token with Zone.DNS Edit on the zone.",
                                                 "token", namespaced=True),
                "endpoint": _str("API endpoint; change only for the local emulator.",
                                 pattern=r"^https?://",
                                 default="https://api.cloudflare.com/client/v4"),
                "proxied": {"type": "boolean", "default": False,
                            "description": "Proxy records through Cloudflare."},
                "txtRegistry": _obj("Also write external-dns style ownership TXT records.", {
                    "enabled": {"type": "boolean", "default": False},
                    "ownerId": _str("Owner id written into the TXT records.", maxLength=63,
                                    pattern=r"^[A-Za-z0-9._-]+$"),
                }),
                "ttl": {"type": "integer", "minimum": 1, "maximum": 86400, "default": 60},
            }, required=["zoneName", "tokenSecretRef"],
                validations=[{
                    "rule": "!has(self.baseDomain) || self.baseDomain == self.zoneName || "
                            "self.baseDomain.endsWith('.' + self.zoneName)",
                    "message": "dns.baseDomain must be inside dns.zoneName"}]),
            "tls": _obj("How workspace hosts get certificates.", {
                "mode": _str("acme: Caddy obtains certificates on demand; internal: Caddy's "
                             "own CA (sandbox); none: plain HTTP (sandbox only).",
                             enum=["acme", "internal", "none"], default="acme"),
                "httpPort": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 80},
                "httpsPort": {"type": "integer", "minimum": 1, "maximum": 65535,
                              "default": 443},
            }),
            "storage": _obj("S3-compatible bucket (Cloudflare R2) for backups.", {
                "endpoint": _str("https://<account>.r2.cloudflarestorage.com",
                                 pattern=r"^https?://"),
                "bucket": _str("Bucket name.", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
                "region": _str("Region; R2 uses auto.", default="auto", maxLength=32),
                "addressingStyle": _str("S3 addressing.", enum=["path", "virtual"],
                                        default="path"),
                "prefix": _str("Key prefix for all backups.", default="agentspaces/",
                               maxLength=256, pattern=r"^[A-Za-z0-9._/-]*$"),
                "keep": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3,
                         "description": "Backups kept per workspace."},
                "credentialsSecretRef": secret_key_ref(
                    "Secret with accessKeyId and secretAccessKey.", "accessKeyId",
                    namespaced=True),
            }, required=["endpoint", "bucket", "credentialsSecretRef"]),
            "encryption": _obj("Envelope encryption of backups.", {
                "keySecretRef": secret_key_ref("32-byte class key (base64) that wraps every "
                                               "workspace data key.", "key", namespaced=True),
            }, required=["keySecretRef"]),
            "idle": _idle_settings(with_defaults=True),
            "lifetime": _obj("Default hard limits.", {
                "max": _duration("Default maximum running time.", "1m"),
            }),
            "agent": _obj("Workspace agent polling.", {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 9443},
                "sourceRanges": {
                    "type": "array", "maxItems": 100, "x-kubernetes-list-type": "set",
                    "description": "The operator's egress addresses (CIDRs, IPv4 and IPv6). "
                                   "Set: a Hetzner Cloud Firewall admits the agent port only "
                                   "from these. Unset: the agent port is open to the internet.",
                    "items": {"type": "string", "maxLength": 43, "x-kubernetes-validations": [{
                        "rule": "isCIDR(self) && cidr(self) == cidr(self).masked()",
                        "message": "must be a CIDR with no host bits set, e.g. "
                                   "203.0.113.7/32 or 2001:db8::/64"}]},
                },
            }),
            "devcontainer": _obj("How far a repository's devcontainer.json is trusted.", {
                "trustRepository": {
                    "type": "boolean", "default": False,
                    "description": "Run the repository's devcontainer.json as written: "
                                   "host commands (initializeCommand), privileges, runArgs, "
                                   "host mounts, docker compose. Off: only what acts inside "
                                   "the container is used (docs/vm.md)."},
            }),
            "limits": class_limits(),
        },
        required=["hetzner", "dns"],
        validations=[
            {"rule": "!has(self.storage) || has(self.encryption)",
             "message": "storage needs encryption.keySecretRef: backups are always encrypted"},
            *CLASS_LIMIT_RULES,
        ],
    )


def class_limits() -> Schema:
    names = {"type": "array", "maxItems": 64, "x-kubernetes-list-type": "set"}
    return _obj(
        "What a Workspace of this class may ask for. The operator refuses (condition "
        "Accepted=False, reason NotAllowedByClass) and creates no server otherwise.",
        {
            "serverTypes": {**names,
                            "items": _str("A server type.", maxLength=16,
                                          pattern=SERVER_TYPE_PATTERN),
                            "description": "Allowed server types; any when unset."},
            "images": {**names,
                       "items": _str("An image name or id.", maxLength=63,
                                     pattern=IMAGE_PATTERN),
                       "description": "Allowed images (names or numeric ids). When unset, "
                                      "any image name but no numeric id (snapshots and "
                                      "backups are reachable only by id)."},
            "idleTimeout": _duration("Longest idle.timeout a workspace may set.", "1m"),
            "agentBusyCap": _duration("Longest idle.agentBusyCap a workspace may set.",
                                      "1m"),
            "lifetime": _duration("Longest lifetime.max a workspace may set; also the "
                                  "lifetime of workspaces that set none.", "1m"),
        },
    )


def _field_or(section: str, field: str, default: str) -> str:
    """CEL for the class's own setting, or the default the operator applies."""
    return (f"(has(self.{section}) && has(self.{section}.{field}) ? "
            f"self.{section}.{field} : '{default}')")


def _limit_rule(limit: str, check: str, message: str) -> Schema:
    """The class's own defaults must respect its own limits: a workspace inherits them."""
    return {"rule": f"!has(self.limits) || !has(self.limits.{limit}) || {check}",
            "message": message}


CLASS_LIMIT_RULES = [
    _limit_rule("serverTypes", f"{_field_or('server', 'type', 'cx23')} in "
                "self.limits.serverTypes", "server.type must be one of limits.serverTypes"),
    _limit_rule("images", f"{_field_or('server', 'image', 'ubuntu-24.04')} in "
                "self.limits.images", "server.image must be one of limits.images"),
    _limit_rule("idleTimeout", f"duration({_field_or('idle', 'timeout', '30m')}) <= "
                "duration(self.limits.idleTimeout)",
                "idle.timeout (30m when unset) must not exceed limits.idleTimeout"),
    _limit_rule("agentBusyCap", f"duration({_field_or('idle', 'agentBusyCap', '6h')}) <= "
                "duration(self.limits.agentBusyCap)",
                "idle.agentBusyCap (6h when unset) must not exceed limits.agentBusyCap"),
    _limit_rule("lifetime", "!has(self.lifetime) || !has(self.lifetime.max) || "
                "duration(self.lifetime.max) <= duration(self.limits.lifetime)",
                "lifetime.max must not exceed limits.lifetime"),
]


def workspace_class_status() -> Schema:
    return _obj("Observed state of the class.", {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {"type": "array", "items": _condition(),
                       "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"]},
    })


def _crd(kind: str, plural: str, scope: str, short_names: list[str], spec: Schema,
         status: Schema, columns: list[Schema], validations: list[Schema] | None = None
         ) -> Schema:
    root: Schema = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    if validations:
        root["x-kubernetes-validations"] = validations
    names: Schema = {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                     "singular": kind.lower(), "categories": ["agentspaces"]}
    if short_names:
        names["shortNames"] = short_names
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": names,
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def workspace_crd() -> Schema:
    name_rule = {
        "rule": "size(self.metadata.name) <= 63",
        "message": "Workspace names are at most 63 characters (they become DNS labels)",
    }
    return _crd(
        "Workspace", "workspaces", "Namespaced", ["ws"], workspace_spec(), workspace_status(),
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "URL", "type": "string", "jsonPath": ".status.urls.workspace"},
            {"name": "Idle", "type": "boolean", "jsonPath": ".status.activity.idle"},
            {"name": "Agent", "type": "string", "jsonPath": ".status.activity.agentState"},
            {"name": "Reason", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type=='Ready')].reason"},
            {"name": "Server", "type": "string", "priority": 1, "jsonPath": ".status.server.ipv4"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        validations=[name_rule],
    )


def workspace_class_crd() -> Schema:
    return _crd(
        "WorkspaceClass", "workspaceclasses", "Cluster", ["wsc"], workspace_class_spec(),
        workspace_class_status(),
        [
            {"name": "Zone", "type": "string", "jsonPath": ".spec.dns.zoneName"},
            {"name": "Server", "type": "string", "jsonPath": ".spec.server.type"},
            {"name": "Location", "type": "string", "jsonPath": ".spec.server.location"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> list[Schema]:
    return [workspace_crd(), workspace_class_crd()]
