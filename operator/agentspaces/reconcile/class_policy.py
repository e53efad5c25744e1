"""What a Workspace may ask of its class: allowlists, caps and reserved ports.

A Workspace cannot see its class at admission, so the operator checks here, after
reading the class and before any cloud call. The check is pure: the effective spec
(class defaults applied) and the class in, a verdict out. Values over a cap are
refused, not clamped: a silently shortened idle timeout or lifetime would stop a
workspace its owner believed safe (docs/design-decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from agentspaces.api.durations import format_duration
from agentspaces.api.enums import Reason
from agentspaces.api.types import WorkspaceClass, WorkspaceSpec


@dataclass(frozen=True)
class Verdict:
    violations: tuple[str, ...]
    """Each one keeps a server from being created."""
    refused_ports: tuple[int, ...]
    """Reserved ports the spec asked for; they are left out, nothing else changes."""

    @property
    def allowed(self) -> bool:
        return not self.violations


def check(spec: WorkspaceSpec, klass: WorkspaceClass) -> Verdict:
    limits = klass.limits
    found: list[str] = []
    server_type, image = spec.server.type, spec.server.image
    if limits.server_types is not None and server_type not in limits.server_types:
        found.append(f"server type {server_type} is not in limits.serverTypes "
                     f"({_listed(limits.server_types)})")
    if limits.images is not None:
        if image not in limits.images:
            found.append(f"image {image} is not in limits.images ({_listed(limits.images)})")
    elif image.isdigit() and image != klass.server.image:
        # Snapshots and backups have ids only: without an allowlist, a numeric id could
        # boot any snapshot in the project.
        found.append(f"image id {image} needs the class to list it in limits.images")
    for what, value, cap in (
            ("idle.timeout", spec.idle.timeout, limits.idle_timeout),
            ("idle.agentBusyCap", spec.idle.agent_busy_cap, limits.agent_busy_cap),
            ("lifetime.max", spec.lifetime_max, limits.lifetime)):
        if _over(value, cap):
            assert value is not None and cap is not None
            found.append(f"{what} {format_duration(value)} exceeds the class limit "
                         f"{format_duration(cap)}")
    return Verdict(tuple(found), spec.refused_ports)


def accepted_condition(verdict: Verdict, class_name: str, has_server: bool
                       ) -> tuple[bool, Reason, str]:
    """(status, reason, message) for the Accepted condition."""
    if verdict.violations:
        consequence = ("the running server is kept until it stops and is not started "
                       "again" if has_server else "no server is created")
        return (False, Reason.NOT_ALLOWED_BY_CLASS,
                f"WorkspaceClass {class_name} does not allow: "
                + "; ".join(verdict.violations) + f" ({consequence})")
    if verdict.refused_ports:
        ports = ", ".join(map(str, verdict.refused_ports))
        return (False, Reason.RESERVED_PORT,
                f"port(s) {ports} are the VM's own services under WorkspaceClass "
                f"{class_name} and are not published; everything else is")
    return True, Reason.SPEC_ACCEPTED, f"within what WorkspaceClass {class_name} allows"


def _over(value: timedelta | None, cap: timedelta | None) -> bool:
    return cap is not None and value is not None and value > cap


def _listed(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)) or "none"
