"""What a new server boots: its class's WorkspaceImage snapshot when one is Ready in the
class's Hetzner project, else the image its spec names (a cold start, which installs
everything at boot). Read only when a server is about to be created."""

from __future__ import annotations

from dataclasses import replace

from agentspaces import metrics
from agentspaces.api.types import ServerSettings, WorkspaceClass
from agentspaces.kube import KubeError, KubePort
from agentspaces.reconcile import image_policy
from agentspaces.reconcile.scope import Scope


async def server_settings(scope: Scope) -> ServerSettings:
    spec, klass = scope.spec, scope.klass
    if klass.workspace_image is None or spec.own_image:
        metrics.SERVER_BOOTS.labels("cold").inc()
        return spec.server
    image, why = await class_image(scope.runtime.kube, klass, scope.creds.hetzner_token)
    if image is not None:
        scope.emit("Normal", "BootImage", f"booting {why}")
        metrics.SERVER_BOOTS.labels("image").inc()
        return replace(spec.server, image=image.image, os_profile=image.os_profile)
    scope.emit("Normal", "ColdStart", f"{why}: booting {spec.server.image}")
    metrics.SERVER_BOOTS.labels("cold").inc()
    return spec.server


async def class_image(kube: KubePort, klass: WorkspaceClass, hetzner_token: str
                      ) -> tuple[ServerSettings | None, str]:
    """The class's server settings with its WorkspaceImage's snapshot when that is Ready
    in the class's project, else None; and why, for an event."""
    name = klass.workspace_image
    if name is None:
        return None, "the class names no WorkspaceImage"
    try:
        body = await kube.get_workspace_image(name)
    except KubeError as err:
        return None, f"cannot read WorkspaceImage {name}: {err.status}"
    project = image_policy.project_fingerprint(klass.hetzner_endpoint, hetzner_token)
    choice = image_policy.boot_choice(name, body, project)
    if choice.image_id is None or choice.os_profile is None:
        return None, choice.why
    return replace(klass.server, image=str(choice.image_id),
                   os_profile=choice.os_profile), choice.why  # type: ignore[arg-type]
