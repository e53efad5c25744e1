"""agentspaces: Workspace resources reconciled into Hetzner Cloud VMs."""

__version__ = "0.1.0"
