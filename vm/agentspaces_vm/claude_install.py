"""Claude Code from the npm registry, for a class with `devcontainer.claudeCode: npm`.

The default way in, the devcontainer feature, comes from ghcr.io. Where that registry is
unreachable, the agent installs the product's pinned Claude Code build on the VM before
`devcontainer up` and the container gets its binary as a read-only bind at
/usr/local/bin/claude (agentspaces_vm.devcontainer), with no feature added.

What is installed: only the platform package (`@anthropic-ai/claude-code-linux-x64`,
`-linux-arm64`), which holds one file, the native `claude` executable. The package
`@anthropic-ai/claude-code` is a wrapper whose install script copies that executable
over a placeholder; the executable alone is Claude Code. It is the glibc build (the
VM's OS), and it runs in the container, so the container image must be glibc-based.

How: `npm ci --ignore-scripts` in a directory holding a package.json and a lockfile
that pins the tarball's URL and sha512 `integrity` (as `npm view <package>@<version>
dist.integrity` reports it). npm refuses a tarball with any other digest (EINTEGRITY),
and the VM's npm brings its own configuration: a registry mirror, a proxy, extra CA
certificates (NODE_EXTRA_CA_CERTS) apply as they do to the bootstrap's npm installs.
The result must then run and report the pinned version.

The install lands in `<root>/<version>` (root: state/claude-code, root's own) and is
moved there only when complete, with a marker naming what was installed; an install
with that marker is kept (idempotent across `devcontainer up` retries and agent
restarts). Every command is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# The same version as scripts/install-claude.sh (tests/unit/test_claude_install.py).
CLAUDE_CODE_VERSION = "2.1.332"
REGISTRY = "https://registry.npmjs.org"
INSTALL_TIMEOUT = 20 * 60.0  # a ~190 MB download
VERSION_TIMEOUT = 60.0
MARKER = "agentspaces-installed.json"
BINARY_NAME = "claude"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What npm may need from the agent's environment: where programs are, the home
# directory (~/.npmrc), proxies and extra CA certificates.
PASSED_ENV = ("PATH", "HOME", "LANG", "http_proxy", "https_proxy", "no_proxy",
              "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "NODE_EXTRA_CA_CERTS")


class InstallError(Exception):
    """The install failed; the message says which step and why (no secrets in it)."""


class Result(Protocol):
    @property
    def returncode(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


# (argv, env, cwd, timeout) -> result; agentspaces_vm.bootstrap.run_command in the agent.
Runner = Callable[[Sequence[str], Mapping[str, str], "Path | None", float], Result]


@dataclass(frozen=True)
class PlatformPackage:
    name: str
    version: str
    integrity: str  # npm's `dist.integrity` of the tarball: sha512-<base64>
    cpu: str  # npm's name for the architecture

    @property
    def tarball_url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.rpartition('/')[2]}-{self.version}.tgz"


# `uname -m` -> the glibc build for that architecture.
PACKAGES: dict[str, PlatformPackage] = {
    "x86_64": PlatformPackage(
        "@anthropic-ai/claude-code-linux-x64", CLAUDE_CODE_VERSION,
        "sha512-f4JWhzwYutJIHScC7/dYOPX6s28tt7ZADhsOi8zwOHq5fFPEuUeChh2NMfinSg0GrUckYxaeebC4h0Dq"
        "iKzLcw==", "x64"),
    "aarch64": PlatformPackage(
        "@anthropic-ai/claude-code-linux-arm64", CLAUDE_CODE_VERSION,
        "sha512-BlHNEtK38KBPWU31F4lUSS9sHclCyfWbThT1CErvxxH8+XcljYLZlQwdyXBkTD62rw1TgfE1u1a+"
        "quMWS0NSJg==", "arm64"),
}


@dataclass(frozen=True)
class Installed:
    binary: Path
    installed_now: bool  # False: it was already there


def platform_package(machine: str | None = None) -> PlatformPackage:
    """The package for this VM's architecture (`machine`: `uname -m`)."""
    machine = machine or platform.machine()
    try:
        return PACKAGES[machine]
    except KeyError:
        raise InstallError(f"no Claude Code build for the VM's architecture {machine!r} "
                           f"(known: {', '.join(sorted(PACKAGES))})") from None


def binary_path(root: Path, package: PlatformPackage) -> Path:
    """Where `install` puts the executable (known before it runs: the config names it)."""
    return _binary_in(root / package.version, package)


def _binary_in(directory: Path, package: PlatformPackage) -> Path:
    return directory / "node_modules" / package.name / BINARY_NAME


def manifest(package: PlatformPackage) -> dict[str, Any]:
    """package.json: the one dependency, at exactly the pinned version."""
    return {"name": "agentspaces-claude-code", "version": package.version, "private": True,
            "dependencies": {package.name: package.version}}


def lockfile(package: PlatformPackage) -> dict[str, Any]:
    """package-lock.json pinning the tarball's URL and sha512; `npm ci` installs exactly
    this and refuses a tarball with another digest."""
    root = manifest(package)
    return {
        "name": root["name"], "version": root["version"], "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"name": root["name"], "version": root["version"],
                 "dependencies": root["dependencies"]},
            f"node_modules/{package.name}": {
                "version": package.version, "resolved": package.tarball_url,
                "integrity": package.integrity, "os": ["linux"], "cpu": [package.cpu],
                "libc": ["glibc"]},
        },
    }


def npm_argv(npm: str, cache: Path) -> list[str]:
    return [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--no-update-notifier",
            "--loglevel=error", "--cache", str(cache)]


def npm_env(environ: Mapping[str, str], *, extra_ca_certs: Path | None = None
            ) -> dict[str, str]:
    """The environment npm runs with. `extra_ca_certs`: a PEM file Node trusts besides
    its own CA list (Node does not read the system trust store)."""
    env = {k: environ[k] for k in PASSED_ENV if k in environ}
    env.setdefault("PATH", DEFAULT_PATH)
    if extra_ca_certs is not None and extra_ca_certs.is_file():
        env["NODE_EXTRA_CA_CERTS"] = str(extra_ca_certs)
    return env


def is_installed(root: Path, package: PlatformPackage) -> bool:
    """True when `<root>/<version>` is a finished install of exactly `package`."""
    try:
        recorded = json.loads((root / package.version / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _marker(package) and binary_path(root, package).is_file()


def _marker(package: PlatformPackage) -> dict[str, str]:
    return {"name": package.name, "version": package.version, "integrity": package.integrity}


def _npm_error(stderr: str, stdout: str) -> str:
    """npm's own error lines, without the pointer to a log file that is removed."""
    lines = [line for line in (stderr or stdout).splitlines()
             if line.strip() and "complete log of this run" not in line]
    return " ".join(lines[-6:])[-600:] or "no output"


def install(root: Path, *, npm: str, runner: Runner, env: Mapping[str, str],
            package: PlatformPackage | None = None, npm_cache: Path | None = None,
            timeout: float = INSTALL_TIMEOUT) -> Installed:
    """Install `package` (default: this VM's) under `root` unless it is there already.

    `npm_cache`: npm's cache to use (tests share theirs); by default a scratch cache
    under `root`, removed afterwards so the tarball is not kept twice.
    Raises InstallError naming the failed step.
    """
    package = package or platform_package()
    target = root / package.version
    if is_installed(root, package):
        return Installed(binary_path(root, package), installed_now=False)
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    partial = root / f".{package.version}.partial"
    own_cache = root / ".npm-cache"
    cache = npm_cache or own_cache
    shutil.rmtree(partial, ignore_errors=True)  # an earlier attempt that did not finish
    partial.mkdir(mode=0o755)
    try:
        (partial / "package.json").write_text(json.dumps(manifest(package), indent=1),
                                              encoding="utf-8")
        (partial / "package-lock.json").write_text(json.dumps(lockfile(package), indent=1),
                                                   encoding="utf-8")
        result = runner(npm_argv(npm, cache), env, partial, timeout)
        if result.returncode != 0:
            raise InstallError(f"npm ci {package.name}@{package.version} exited "
                               f"{result.returncode}: {_npm_error(result.stderr, result.stdout)}")
        binary = _binary_in(partial, package)
        if not binary.is_file():
            raise InstallError(f"{package.name}@{package.version} has no {BINARY_NAME} "
                               "executable")
        binary.chmod(0o755)
        check_version(binary, package.version, runner=runner, env=env)
        (partial / MARKER).write_text(json.dumps(_marker(package)), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)  # an unfinished or different install
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if npm_cache is None:
            shutil.rmtree(own_cache, ignore_errors=True)
    return Installed(binary_path(root, package), installed_now=True)


def check_version(binary: Path, version: str, *, runner: Runner,
                  env: Mapping[str, str]) -> None:
    """`claude --version` must run and start with `version`."""
    result = runner([str(binary), "--version"], {**env, "DISABLE_AUTOUPDATER": "1"}, None,
                    VERSION_TIMEOUT)
    words = result.stdout.split()
    if result.returncode != 0 or not words or words[0] != version:
        detail = (result.stderr or result.stdout).strip()[-300:] or "no output"
        raise InstallError(f"{binary.name} --version did not report {version} "
                           f"(exit {result.returncode}): {detail}")



def main(argv: Sequence[str] | None = None) -> int:
    """`python3 -m agentspaces_vm.claude_install ROOT`: this VM's pinned build under ROOT,
    as the agent installs it (scripts/build-vm-image.sh bakes it into an image this way,
    and the agent then finds it installed)."""
    import sys

    from agentspaces_vm.bootstrap import run_command

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python3 -m agentspaces_vm.claude_install ROOT", file=sys.stderr)
        return 2
    try:
        done = install(Path(args[0]), npm=shutil.which("npm") or "npm", runner=run_command,
                       env=npm_env(os.environ))
    except InstallError as exc:
        print(f"claude_install: {exc}", file=sys.stderr)
        return 1
    print(f"{'installed' if done.installed_now else 'already installed'}: {done.binary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
