"""Templates the VM boots with; shipped as package data (agentspaces_cloudinit)."""
