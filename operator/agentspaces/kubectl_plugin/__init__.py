"""`kubectl ws`: the kubectl plugin for Workspaces (console script `kubectl-ws`).

It acts as the user, with their kubeconfig, context and namespace, so their RBAC decides
what it may do: `cluster` talks to the apiserver, `commands` decides what to read and
write and how to say what went wrong, `main` parses the arguments kubectl passes on.
"""
