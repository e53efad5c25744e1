"""Which devcontainer a workspace runs, and the parts the VM adds to it.

The choice happens on the VM after the clone (the agent looks at the repository), in
this order:

1. `spec.devcontainer.image`: a generated config that is just that image
   (`image_devcontainer`).
2. `spec.devcontainer.path`: that file in the repository; missing is an error.
3. The repository's own `.devcontainer/devcontainer.json`, then `.devcontainer.json`.
4. Otherwise the default, cloudinit/devcontainer.json (`default_devcontainer`): a base
   Ubuntu image with Node 22. It ships inside the agent bundle.

Claude Code is never part of those files, so a repository's config stays untouched.
The class's `devcontainer.claudeCode` (agent.json `claudeCode`) says how it gets in:
`feature` (default): the agent passes `CLAUDE_CODE_FEATURE` with `devcontainer up
--additional-features` (from ghcr.io); `npm`: the agent installs the product's pinned
Claude Code build from the npm registry on the VM (agentspaces_vm.claude_install,
integrity pinned) and binds its binary read-only at /usr/local/bin/claude, no feature.

A repository's config (2, 3) is vetted on the VM (agentspaces_vm.devcontainer_policy):
only keys that act inside the container run, docker compose is refused, unless the
class sets `devcontainer.trustRepository` (agent.json `repository.trustDevcontainer`).
"""

from __future__ import annotations

import json
from typing import Any

from agentspaces.api.types import WorkspaceSpec
from agentspaces.vmconfig import templates

DEFAULT_TEMPLATE = "devcontainer.json"
REPOSITORY_CANDIDATES = (".devcontainer/devcontainer.json", ".devcontainer.json")
CLAUDE_CODE_FEATURE = "ghcr.io/anthropics/devcontainer-features/claude-code:1"


def default_devcontainer() -> dict[str, Any]:
    """The devcontainer.json used when the repository has none."""
    config: dict[str, Any] = json.loads(templates.read_template(DEFAULT_TEMPLATE))
    return config


def image_devcontainer(image: str) -> dict[str, Any]:
    """The config for `spec.devcontainer.image`: the default's name, that image."""
    return {"name": default_devcontainer()["name"], "image": image}


def additional_features() -> dict[str, Any]:
    """The JSON for `devcontainer up --additional-features`."""
    return {CLAUDE_CODE_FEATURE: {}}


def config_candidates(spec: WorkspaceSpec) -> tuple[str, ...]:
    """Repository-relative paths to try, in order; empty when an image is set."""
    if spec.devcontainer_image:
        return ()
    if spec.devcontainer_path:
        return (spec.devcontainer_path,)
    return REPOSITORY_CANDIDATES
