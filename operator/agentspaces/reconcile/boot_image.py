"""What a new server boots: its class's WorkspaceImage snapshot when one is Ready in the
class's Hetzner project, else the image its spec names (a cold start, which installs
everything at boot). Read only when a server is about to be created."""

from __future__ import annotations

from dataclasses import replace

from agentspaces import metrics
from agentspaces.api.types import ServerSettings
from agentspaces.kube import KubeError
from agentspaces.reconcile import image_policy
from agentspaces.reconcile.scope import Scope


async def server_settings(scope: Scope) -> ServerSettings:
    spec, klass = scope.spec, scope.klass
    name = klass.workspace_image
    if name is None or spec.own_image:
        metrics.SERVER_BOOTS.labels("cold").inc()
        return spec.server
    try:
        body = await scope.runtime.kube.get_workspace_image(name)
    except KubeError as err:
        why = f"cannot read WorkspaceImage {name}: {err.status}"
    else:
        project = image_policy.project_fingerprint(klass.hetzner_endpoint,
                                                   scope.creds.hetzner_token)
        choice = image_policy.boot_choice(name, body, project)
        if choice.image_id is not None and choice.os_profile is not None:
            scope.emit("Normal", "BootImage", f"booting {choice.why}")
            metrics.SERVER_BOOTS.labels("image").inc()
            return replace(spec.server, image=str(choice.image_id),
                           os_profile=choice.os_profile)  # type: ignore[arg-type]
        why = choice.why
    scope.emit("Normal", "ColdStart", f"{why}: booting {spec.server.image}")
    metrics.SERVER_BOOTS.labels("cold").inc()
    return spec.server
