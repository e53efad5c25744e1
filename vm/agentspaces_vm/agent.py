"""The agent's runtime: the parts wired together, and what each API call does.

`Agent` owns the state (secrets, public ports, discovered ports, boot sequence,
backups, activity) and one background thread that discovers ports, keeps Caddy's
routes current and samples activity. `server.py` maps HTTP requests onto its methods.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from agentspaces_vm import __version__, claude_settings
from agentspaces_vm.auth import FailureLimiter, bearer_token, token_matches
from agentspaces_vm.backup_job import BackupFn, BackupRunner
from agentspaces_vm.bootstrap import Bootstrap, RestoreFn, Runner, repo_dir_name, run_command
from agentspaces_vm.caddy import (
    AgentAuth,
    CaddyAdmin,
    CaddyInputs,
    CaddySync,
    render_config,
    write_private_json,
)
from agentspaces_vm.config import AgentConfig, ConfigError, validate_ca_bundle, validate_ports
from agentspaces_vm.contracts import Activity, AgentStatus
from agentspaces_vm.ports import PortPoller
from agentspaces_vm.save_job import SaveRunner
from agentspaces_vm.secrets import SecretsError, SecretStore, parse_delivery
from agentspaces_vm.status import build_status
from agentspaces_vm.usage import UsageScanner
from agentspaces_vm.webauth import Account, Answer, LinkPort, WebAuth, WebRequest

log = logging.getLogger(__name__)


class ActivitySource(Protocol):
    def record_hook(self, payload: object) -> bool: ...
    def poll(self) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class BadRequest(ValueError):
    """Input the API rejects with 400; the message is safe to return and log."""


def _read_or_create_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except OSError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


class Agent:
    def __init__(self, config: AgentConfig, *, caddy_template: str,
                 activity_factory: Callable[[Agent], ActivitySource] | None = None,
                 runner: Runner = run_command, restore_fn: RestoreFn | None = None,
                 backup_fn: BackupFn | None = None,
                 proc_net_files: Sequence[Path] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._template = caddy_template
        self._runner = runner
        self._monotonic = monotonic
        state = config.paths.state
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        owner = (config.container_user.uid, config.container_user.gid)
        self.store = SecretStore(config.paths.secrets,
                                 container_owner=None if config.simulate else owner)
        self.store.prepare()
        self.limiter = FailureLimiter(monotonic)
        self.hook_token = _read_or_create_token(state / "hook-token")
        self._lock = threading.RLock()
        self._public_ports_file = state / "public-ports.json"
        self.public_ports: tuple[int, ...] = self._load_public_ports()
        self._link_ports_file = state / "link-ports.json"
        self.link_ports: tuple[int, ...] = self._load_link_ports()
        self.ports: dict[int, str] = {}
        poller_kwargs = {"files": tuple(proc_net_files)} if proc_net_files else {}
        self._poller = PortPoller(config.port_discovery.addresses, config.internal_ports,
                                  **poller_kwargs)
        # Caddy restarts with only its admin API (docs/vm.md): notice within seconds.
        self.caddy = CaddySync(CaddyAdmin(str(config.caddy.admin)), state / "caddy.json",
                               resync_seconds=10.0)
        self.bootstrap = Bootstrap(config, self.store, configure_claude=self.configure_claude,
                                   runner=runner, restore_fn=restore_fn,
                                   on_busy=self._suppress_file_activity)
        self.backups = BackupRunner(config.paths.workspaces, backup_fn)
        self.saves = SaveRunner(config, self.store, self._repo_dir)
        self.activity = (activity_factory or default_activity)(self)
        # Claude Code's transcripts (CLAUDE_CONFIG_DIR=/workspaces/.claude): token usage.
        self.usage = UsageScanner(config.paths.workspaces)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- persistent settings ------------------------------------------------------

    def _load_public_ports(self) -> tuple[int, ...]:
        try:
            raw = json.loads(self._public_ports_file.read_text(encoding="utf-8"))
            ports = validate_ports(raw, "public-ports.json")
        except (OSError, ValueError):
            return self.config.public_ports
        return self.config.routable_public_ports(ports, "public-ports.json")

    def _load_link_ports(self) -> tuple[int, ...]:
        """Ports that share links open (PUT /v1/config), kept across agent restarts."""
        try:
            raw = json.loads(self._link_ports_file.read_text(encoding="utf-8"))
            ports = validate_ports(raw, "link-ports.json")
        except (OSError, ValueError):
            return ()
        return self.config.routable_public_ports(ports, "link-ports.json")

    # -- authentication -----------------------------------------------------------

    def authenticate(self, address: str, header: str | None) -> tuple[int, int | None]:
        """(0, None) when allowed, (429, retry_after) when blocked, (401, None) otherwise.

        The token is checked first: failures from a shared address (NAT, the operator's
        egress) must never lock out the valid token; only failures are limited.
        """
        if token_matches(header, self.config.token_sha256):
            return 0, None
        retry = self.limiter.retry_after(address)
        if retry is not None:
            return 429, retry
        self.limiter.record_failure(address)
        return 401, None

    def _web_auth(self) -> WebAuth:
        with self._lock:
            web: WebAuth | None = getattr(self, "_web", None)
            if web is None:
                # Signs browser sessions; kept in the state dir so they survive restarts.
                key = _read_or_create_token(self.config.paths.state / "web-session-key")
                web = self._web = WebAuth(key.encode(), monotonic=self._monotonic)
            return web

    def web_front_key_matches(self, header: str | None) -> bool:
        """Whether a /web/* call comes from Caddy (the container reaches the local
        listener too, but cannot read Caddy's config)."""
        return hmac.compare_digest((header or "").encode(),
                                   self._web_auth().front_key.encode())

    def _web_account(self) -> Account | None:
        state = self.store.load()
        auth = state.basic_auth
        return None if auth is None else Account(auth.username, auth.scrypt_hash,
                                                 session_key=state.session_key,
                                                 share_key=state.share_link_key)

    def _link_port(self, host: str) -> LinkPort | None:
        """The port a `{port}.{host}[:p]` Host names, when share links may open it."""
        name = host.strip().lower().partition(":")[0]  # a workspace host has no ":"
        label, _, rest = name.partition(".")
        if rest != self.config.host or not label.isdigit() or len(label) > 5:
            return None
        with self._lock:
            shared = int(label) in self.link_ports and int(label) not in self.public_ports
        return LinkPort(self.config.host, int(label)) if shared else None

    def web_check(self, request: WebRequest) -> Answer:
        """Caddy's forward-auth question for a private route (webauth.py)."""
        return self._web_auth().check(request, self._web_account(),
                                      self._link_port(request.host))

    def web_login(self, request: WebRequest, body: bytes) -> Answer:
        return self._web_auth().login(request, body, self._web_account())

    def hook_authorized(self, header: str | None) -> bool:
        token = bearer_token(header) or ""
        return hmac.compare_digest(token.encode(), self.hook_token.encode()) and bool(token)

    # -- Caddy --------------------------------------------------------------------

    def caddy_inputs(self) -> CaddyInputs:
        cfg = self.config
        with self._lock:
            ports = dict(self.ports)
            public = frozenset(self.public_ports)
        return CaddyInputs(
            host=cfg.host, admin_listen=str(cfg.caddy.admin), bind=cfg.caddy.bind,
            tls_mode=cfg.caddy.tls_mode, http_port=cfg.caddy.http_port,
            https_port=cfg.caddy.https_port, ui_port=cfg.caddy.ui_port,
            ask_endpoint=f"{cfg.local_url}/ask", ports=ports, public_ports=public,
            agent_auth=(AgentAuth(str(cfg.local_listen), self._web_auth().front_key)
                        if self.store.load().basic_auth else None),
            reserved_ports=cfg.internal_ports, upstream_host=self._upstream_host())

    def _upstream_host(self) -> str:
        bind = self.config.caddy.bind
        try:
            return bind if bind and ipaddress.ip_address(bind).is_loopback else "127.0.0.1"
        except ValueError:
            return "127.0.0.1"

    def sync_caddy(self) -> bool:
        return self.caddy.apply(render_config(self._template, self.caddy_inputs()),
                                self._monotonic())

    # -- API operations -------------------------------------------------------------

    def status_document(self) -> AgentStatus:
        try:
            activity: Activity | None = Activity.from_json(self.activity.snapshot())
        except Exception:
            log.exception("activity snapshot failed")
            activity = None
        with self._lock:
            ports = sorted(self.ports)
        return build_status(version=__version__, simulated=self.config.simulate,
                            boot=self.bootstrap.snapshot(), ports=ports, activity=activity,
                            secrets_version=self.store.load().version,
                            backup=self.backups.snapshot(),
                            usage=self.usage.report())

    def apply_secrets(self, body: object) -> dict[str, Any]:
        try:
            delivery = parse_delivery(body)
        except SecretsError as exc:
            raise BadRequest(str(exc)) from None
        with self._lock:
            state = self.store.apply(delivery)
        log.info("secrets version %s applied (claude credential: %s, repository token: %s, "
                 "registry logins: %s, share-link key: %s)", state.version,
                 state.claude_credential or "none",
                 "yes" if state.has_repository_token else "no",
                 "yes" if state.has_registry_config else "no",
                 "yes" if state.share_link_key else "no")
        if self.bootstrap.workspace_writable:
            self.configure_claude()
        loaded = self.sync_caddy()
        return {"version": state.version, "caddyLoaded": loaded}

    def apply_config(self, body: object) -> dict[str, Any]:
        """PUT /v1/config, a full replacement: the public ports (routed at once), the
        ports share links open, and the class's CA certificates (installed by the start
        sequence, before the clone)."""
        if not isinstance(body, dict) or "publicPorts" not in body or \
                not set(body) <= {"publicPorts", "linkPorts", "caBundle"}:
            raise BadRequest("expected {\"publicPorts\": [ports]} and optionally "
                             "\"linkPorts\": [ports], \"caBundle\": PEM certificates")
        try:
            asked = validate_ports(body["publicPorts"], "publicPorts")
            linked = validate_ports(body.get("linkPorts", []), "linkPorts")
            certificates = validate_ca_bundle(body.get("caBundle"), "caBundle")
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
        ports = self.config.routable_public_ports(asked, "PUT /v1/config")
        link_ports = self.config.routable_public_ports(linked, "PUT /v1/config")
        with self._lock:
            self.public_ports = ports
            write_private_json(self._public_ports_file, list(ports))
            self.link_ports = link_ports
            write_private_json(self._link_ports_file, list(link_ports))
            if self.bootstrap.trust.save(certificates):
                log.info("CA bundle of the class: %d certificate(s)", len(certificates))
        loaded = self.sync_caddy()
        return {"publicPorts": list(ports), "linkPorts": list(link_ports),
                "ignoredPorts": sorted((set(asked) - set(ports)) | (set(linked) - set(link_ports))),
                "caCertificates": len(certificates), "caddyLoaded": loaded}

    def request_start(self, body: object) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or "restore" not in body:
            raise BadRequest("expected {\"restore\": null or a restore plan}")
        plan = body["restore"]
        if plan is not None and not isinstance(plan, dict):
            raise BadRequest("restore: expected null or an object")
        return self.bootstrap.request_start(plan)

    def start_backup(self, body: object) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not body:
            raise BadRequest("expected a backup plan object")
        backup_id = self.backups.start(body)
        if backup_id is None:
            return 409, {"error": "backup running", "id": self.backups.snapshot().backup_id}
        return 202, {"id": backup_id}

    def _repo_dir(self) -> Path:
        """Where the clone is (or would be): the pre-stop save's repository."""
        known = self.bootstrap.snapshot().repo_dir
        repo = self.config.repository
        return Path(known) if known else self.config.paths.workspaces / (
            repo_dir_name(repo.url) if repo else "workspace")

    def allowed_domain(self, domain: str) -> bool:
        """Caddy's on-demand TLS question: may it get a certificate for `domain`?"""
        name = domain.strip().lower().rstrip(".")
        host = self.config.host
        if name == host:
            return True
        label, _, rest = name.partition(".")
        if rest != host or not label.isdigit() or len(label) > 5 or label.startswith("0"):
            return False
        port = int(label)
        with self._lock:
            return port in self.ports or port in self.public_ports

    def record_hook(self, payload: object) -> bool:
        return self.activity.record_hook(payload)

    def configure_claude(self, repo: Path | None = None) -> None:
        """Install the Claude Code files (settings + hooks, CLAUDE.md, .mcp.json).

        Root writes into the container's tree: claude_settings goes through safefs from
        the root-owned /workspaces, so no link planted there is ever followed."""
        cfg = self.config
        if repo is None:
            known = self.bootstrap.snapshot().repo_dir
            repo = Path(known) if known else None
        owner = None if cfg.simulate else (cfg.container_user.uid, cfg.container_user.gid)
        claude_settings.install(
            seed_dir=cfg.claude_seed_dir, config_dir=cfg.paths.workspaces / ".claude",
            repo=repo, hook_url=f"{cfg.local_url}/hooks", hook_token=self.hook_token,
            auth=claude_settings.ClaudeAuth.of(self.store.load()), owner=owner,
            is_tracked=self._git_tracks)

    def _git_tracks(self, repo: Path, name: str) -> bool:
        """Whether git tracks `name`. The repository (its .git/config too) is the
        container's: git runs as the container's user, without the system and global
        config and with the fsmonitor hook off, so the config cannot run a program."""
        cfg = self.config
        argv = [cfg.tools.git, "-c", "core.fsmonitor=false", "-C", str(repo), "ls-files",
                "--error-unmatch", "--", name]
        if os.geteuid() == 0 and not cfg.simulate:
            user = cfg.container_user
            argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
                    "--", *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull, "HOME": "/nonexistent"}
        return self._runner(argv, env, None, 30.0).returncode == 0

    def _suppress_file_activity(self, busy: bool) -> None:
        self.usage.hold(busy)  # a restore writes transcripts: no partial sums meanwhile
        suppress = getattr(self.activity, "suppress_files_until", None)
        if suppress is not None:
            suppress(utc_now() + (timedelta(days=1) if busy else timedelta(0)))

    def _counts_host(self, host: str) -> bool:
        """Traffic to public ports is not the user's: it must not keep a VM alive."""
        label, _, rest = host.lower().partition(".")
        if rest != self.config.host or not label.isdigit():
            return True
        with self._lock:
            return int(label) not in self.public_ports

    # -- background loop --------------------------------------------------------------

    def start(self) -> None:
        self.bootstrap.resume()
        self.refresh_ports()
        self.sync_caddy()
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        close = getattr(self.activity, "close", None)
        if close is not None:
            close()

    def refresh_ports(self) -> bool:
        """Re-read the socket tables; True when the set of routed ports changed."""
        try:
            found = self._poller.poll()
        except Exception:
            log.exception("port discovery failed")
            return False
        with self._lock:
            changed = found != self.ports
            if changed:
                log.info("listening ports: %s", ", ".join(map(str, found)) or "none")
                self.ports = found
        return changed

    def _loop(self) -> None:
        interval = self.config.port_discovery.interval_seconds
        activity_every = self.config.activity_poll_seconds
        next_activity = self._monotonic()
        while not self._stop.is_set():
            try:
                self.refresh_ports()
                # Unchanged configs are not re-posted; failed loads are retried here.
                self.sync_caddy()
                if self._monotonic() >= next_activity:
                    next_activity = self._monotonic() + activity_every
                    self.activity.poll()
                    self.usage.poll()
            except Exception:
                log.exception("background poll failed")
            self._wake.wait(timeout=interval)
            self._wake.clear()


def default_activity(agent: Agent) -> ActivitySource:
    """The real tracker (agentspaces_vm.activity), imported when the agent starts."""
    from agentspaces_vm.activity import ActivityTracker

    cfg = agent.config
    tracker: ActivitySource = ActivityTracker(
        utc_now, workspaces_root=cfg.paths.workspaces,
        caddy_metrics_url=f"http://{cfg.caddy.admin}/metrics",
        http_counts_host=agent._counts_host)
    return tracker
