"""OS profiles: which cloud-config and bootstrap script an image boots with.

One profile per supported image name (`api.model.OS_PROFILES`); a numeric image id
boots with its class's `server.osProfile` (`ServerSettings.os_profile`). Profiles share
every file but two templates in cloudinit/: the static cloud-config (the distribution's
packages) and bootstrap.sh (what comes from elsewhere, and how). docs/vm.md lists what
each one installs from where.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentspaces.api.types import ServerSettings


@dataclass(frozen=True)
class OsProfile:
    name: str
    cloud_config: str
    """Template with the static part of the cloud-config (packages)."""
    bootstrap: str
    """Template installed as /opt/agentspaces/bootstrap.sh."""


PROFILES: dict[str, OsProfile] = {
    "ubuntu-24.04": OsProfile("ubuntu-24.04", cloud_config="cloud-config.yaml",
                              bootstrap="bootstrap.sh"),
    "debian-13": OsProfile("debian-13", cloud_config="cloud-config-debian-13.yaml",
                           bootstrap="bootstrap-debian-13.sh"),
}


class UnknownOsProfile(ValueError):
    """The server's image has no profile (a numeric id whose class names none)."""


def profile_for(server: ServerSettings) -> OsProfile:
    if server.os_profile is None:
        raise UnknownOsProfile(f"image {server.image} is a numeric id and its "
                               "WorkspaceClass names no server.osProfile")
    return PROFILES[server.os_profile]
