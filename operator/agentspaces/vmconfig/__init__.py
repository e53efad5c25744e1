"""Pure builders that render what a workspace VM boots with (docs/vm.md).

- `userdata.render_user_data`: the #cloud-config document (32 KiB cap checked).
- `osprofile`: per supported image (ubuntu-24.04, debian-13), its packages and bootstrap.
- `agent_config.render_agent_config`: agent.json, also used by the local sandbox.
- `agent_bundle.load_agent_bundle`: the agent zipapp the operator pushes to a VM.
- `claude`: CLAUDE.md, Claude Code settings.json, .mcp.json.
- `devcontainer`: the default devcontainer and the Claude Code feature.
"""
