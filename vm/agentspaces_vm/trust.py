"""The class's extra CA certificates on the VM (WorkspaceClass spec.trust.caBundle).

The operator delivers them with PUT /v1/config; `TrustStore.save` keeps them in
state/trust/ca-bundle.pem. The start sequence installs them before the restore and
the clone (`install`): one file per certificate in /usr/local/share/ca-certificates,
then `update-ca-certificates`, so git, curl, Python and Docker (all reading the
system store) trust them. Docker reads the store once when it starts, so it is
restarted before `devcontainer up` when the installed bundle changed since
(`restart_docker`). Node keeps its own list: Node programs (the devcontainer CLI,
npm) get NODE_EXTRA_CA_CERTS pointing at the delivered bundle (`node_env`).

Both steps are idempotent: markers in state/trust record what was installed and
what Docker was restarted for, so an agent restart repeats nothing. In simulate mode
the certificates go to state/trust/system-ca-certificates and no system tool runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SYSTEM_CERT_DIR = Path("/usr/local/share/ca-certificates")
CERT_PREFIX = "agentspaces-class-"
BUNDLE_NAME = "ca-bundle.pem"
# update-ca-certificates and a Docker restart take seconds on a VM, but minutes under
# emulation while the bootstrap runs beside them (over 120 s measured under QEMU's TCG).
TOOL_TIMEOUT = 600.0
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

RunFn = Callable[[Sequence[str], Mapping[str, str], "Path | None", float], Any]
"""bootstrap.Runner: (argv, env, cwd, timeout) -> a result with returncode and stderr."""


class TrustError(RuntimeError):
    """A system tool failed; the message names it and its error output."""


def bundle_file(state: Path) -> Path:
    """The delivered bundle (all certificates, PEM): what NODE_EXTRA_CA_CERTS names."""
    return state / "trust" / BUNDLE_NAME


def node_env(state: Path) -> dict[str, str]:
    """Environment for a Node program (npm, the devcontainer CLI) so it trusts the
    class's certificates too: empty without a bundle."""
    path = bundle_file(state)
    return {"NODE_EXTRA_CA_CERTS": str(path)} if path.is_file() else {}


def _digest(certificates: Sequence[str]) -> str:
    return hashlib.sha256("".join(certificates).encode()).hexdigest() if certificates else ""


class TrustStore:
    def __init__(self, state: Path, runner: RunFn, *, simulate: bool,
                 cert_dir: Path | None = None) -> None:
        self.dir = state / "trust"
        self.bundle = bundle_file(state)
        self.cert_dir = cert_dir or (self.dir / "system-ca-certificates" if simulate
                                     else SYSTEM_CERT_DIR)
        self._runner = runner
        self._simulate = simulate

    # -- the delivered bundle --------------------------------------------------------

    def save(self, certificates: Sequence[str]) -> bool:
        """Keep the delivered certificates (validated PEM blocks; none removes the
        bundle). True when they differ from what was kept."""
        changed = _digest(certificates) != _digest(self.certificates())
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if certificates:
            self._write(self.bundle, "".join(certificates), 0o644)
        else:
            self.bundle.unlink(missing_ok=True)
        return changed

    def certificates(self) -> tuple[str, ...]:
        try:
            text = self.bundle.read_text(encoding="ascii")
        except OSError:
            return ()
        end = "-----END CERTIFICATE-----\n"
        return tuple(block + end for block in text.split(end) if block.strip())

    # -- the system store --------------------------------------------------------------

    def install(self) -> bool:
        """Put the delivered certificates into the system trust store (and take out the
        ones no longer delivered). True when the store changed."""
        certificates = self.certificates()
        digest = _digest(certificates)
        wanted = {f"{CERT_PREFIX}{n}.crt": pem for n, pem in enumerate(certificates, 1)}
        present = self._ours()
        if self._marker("installed") == digest and set(present) == set(wanted):
            return False
        self.cert_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        for name, pem in wanted.items():
            self._write(self.cert_dir / name, pem, 0o644)
        for name in set(present) - set(wanted):
            (self.cert_dir / name).unlink(missing_ok=True)
        if not self._simulate:
            self._run(["update-ca-certificates"])
        self._set_marker("installed", digest)
        log.info("system trust store: %d certificate(s) of the class installed",
                 len(certificates))
        return True

    def restart_docker(self) -> bool:
        """Restart Docker when the installed certificates changed since Docker last
        started with them, so its registry pulls trust them. True when it restarted."""
        installed = self._marker("installed")
        if self._marker("docker") == installed:
            return False
        if not self._simulate:
            self._run(["systemctl", "restart", "docker.service"])
            log.info("Docker restarted to load the changed trust store")
        self._set_marker("docker", installed)
        return not self._simulate

    # -- internals ------------------------------------------------------------------

    def _ours(self) -> list[str]:
        try:
            return [p.name for p in self.cert_dir.iterdir()
                    if p.name.startswith(CERT_PREFIX) and p.name.endswith(".crt")]
        except OSError:
            return []

    def _run(self, argv: list[str]) -> None:
        result = self._runner(argv, {"PATH": os.environ.get("PATH") or _SYSTEM_PATH,
                                     "LANG": "C.UTF-8"}, None, TOOL_TIMEOUT)
        if result.returncode != 0:
            detail = (result.stderr or "").strip()[-300:] or f"exit {result.returncode}"
            raise TrustError(f"{argv[0]} failed: {detail}")

    def _marker(self, name: str) -> str:
        try:
            return (self.dir / name).read_text(encoding="ascii").strip()
        except OSError:
            return ""

    def _set_marker(self, name: str, value: str) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write(self.dir / name, value + "\n", 0o600)

    @staticmethod
    def _write(path: Path, text: str, mode: int) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
