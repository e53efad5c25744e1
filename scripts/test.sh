#!/usr/bin/env bash
# The whole test suite from a fresh checkout: installs what it needs, then runs lint,
# unit, component, integration (real kube-apiserver + etcd), e2e (sandbox) and real-VM
# (QEMU guests; always last, the slowest) tiers, after ruff, mypy and import-linter.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k idle
set -euo pipefail
cd "$(dirname "$0")/.."

# cloud-init (schema), sudo (visudo, cvtsudoers) and systemd (systemd-analyze) check
# the rendered user-data with the real tools; QEMU, debootstrap and the FAT tools build
# and boot the real VMs (scripts/build-vm-image.sh, tests/component/test_vm_qemu.py);
# ssh looks into the real-VM tier's guests (tests/realvm/); chromium is the browser the
# dashboard's browser tier drives with Playwright (tests/browser/).
APT_PACKAGES="cloud-init sudo systemd qemu-system-x86 qemu-utils debootstrap dosfstools mtools
  openssh-client chromium"
if ! command -v cloud-init >/dev/null 2>&1 || ! command -v cvtsudoers >/dev/null 2>&1 ||
  ! command -v systemd-analyze >/dev/null 2>&1 ||
  ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1 ||
  ! [ -x /usr/sbin/debootstrap ] || ! command -v mcopy >/dev/null 2>&1 ||
  ! [ -x /usr/sbin/mkfs.vfat ] || ! command -v ssh >/dev/null 2>&1 ||
  ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing $APT_PACKAGES (to check the user-data and boot real VMs)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # shellcheck disable=SC2086  # one word per package
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    $APT_PACKAGES >&2 || {
    $SUDO apt-get update >&2
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      $APT_PACKAGES >&2
  }
fi
assets=$(bash scripts/bootstrap.sh | tail -n 1)
export KUBEBUILDER_ASSETS="$assets"
# The pinned Claude Code CLI (npm, cached outside the repository) that
# tests/component/test_claude_real.py runs against a scripted Messages API.
claude_bin=$(bash scripts/install-claude.sh | tail -n 1)
export AGENTSPACES_CLAUDE_BIN="$claude_bin"
# The pinned helm, built once from Go modules like the Kubernetes binaries; the chart
# tests (tests/integration/test_helm_chart.py) lint and render charts/agentspaces with it.
helm_bin=$(bash scripts/build-helm.sh | tail -n 1)
export AGENTSPACES_HELM="$helm_bin"
# The real-VM tier's devcontainer image (tests/realvm/): a Debian 13 rootfs layer, built
# once into the cache; the tier's registry serves it to the VM's Docker.
bash scripts/build-container-image.sh >/dev/null
# Its VMs boot the workspace image: Debian 13 with the bootstrap's software installed at
# build time (the first build: about 10 minutes, then cached).
bash scripts/build-vm-image.sh --workspace >/dev/null
# The dashboard's pinned htmx files (npm, integrity-checked, cached outside the repository).
dashboard_assets=$(bash scripts/fetch-dashboard-assets.sh | tail -n 1)
export AGENTSPACES_DASHBOARD_ASSETS="$dashboard_assets"
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff" >&2
ruff check operator vm tests benchmarks scripts
echo "== mypy" >&2
mypy operator/agentspaces vm/agentspaces_vm
echo "== import-linter" >&2
# The layers and forbidden imports declared in .importlinter.
lint-imports --no-cache
echo "== pytest" >&2
# Exit code 5 (no tests collected) is a failure here, like any other non-zero code.
if [ $# -gt 0 ]; then
  exec pytest -p no:cacheprovider "$@"
fi
# The integration tier on two workers, each with its own control plane and one test
# module at a time: its tests mostly wait (poll timers, child processes, the apiserver),
# so two share the two cores. Modules keep to their own loopback blocks and ports.
# Then every other tier in one run, the real-VM tier last (tests/conftest.py).
failed=0
pytest -p no:cacheprovider -n 2 --dist loadfile tests/integration || failed=$?
pytest -p no:cacheprovider tests --ignore=tests/integration || failed=$?
exit "$failed"
