"""`python -m agentspaces.kubectl_plugin`, the same as `kubectl-ws`."""

import sys

from agentspaces.kubectl_plugin.main import main

sys.exit(main())
