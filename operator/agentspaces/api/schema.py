"""Moved: the API's constants live in `api.model`, the CRDs in `api.crd`.

This re-export remains only until the last importers are converted.
"""

from agentspaces.api.model import GROUP, RESERVED_PORTS, VERSION

__all__ = ["GROUP", "RESERVED_PORTS", "VERSION"]
