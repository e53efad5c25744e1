# The two commands a newcomer needs (see README): `make sandbox` and `make test`.
.PHONY: sandbox sandbox-down test lint crds

sandbox:
	bash scripts/sandbox.sh

sandbox-down:
	.venv/bin/agentspaces sandbox down

test:
	bash scripts/test.sh

lint:
	.venv/bin/ruff check operator vm tests benchmarks scripts

# The Helm chart carries its own copy (Helm installs CRDs only from the chart's crds/).
crds:
	.venv/bin/agentspaces crds > crds/agentspaces.dev.yaml
	cp crds/agentspaces.dev.yaml charts/agentspaces/crds/agentspaces.dev.yaml
