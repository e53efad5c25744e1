"""The web dashboard: a Kubernetes client that acts with its user's own credentials
(docs/dashboard.md). It imports the API models, never the reconcile code."""
