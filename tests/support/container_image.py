"""The real-VM tier's devcontainer image: scripts/build-container-image.sh builds (once,
cached outside the repository) a Debian 13 root filesystem as one gzip layer; this runs
it and turns the result into an image the test registry serves."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.oci_registry import Image, single_layer_image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-container-image.sh"


def build_layer(timeout: float = 20 * 60) -> Path:
    """The cached image directory (layer.tar.gz, diff_id); progress goes to stderr."""
    result = subprocess.run(["bash", str(SCRIPT)], stdout=subprocess.PIPE, stderr=None,
                            stdin=subprocess.DEVNULL, text=True, timeout=timeout,
                            check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        raise RuntimeError(f"{SCRIPT.name} failed (exit {result.returncode})")
    return Path(lines[-1])


def workspace_image(repository: str = "agentspaces/devcontainer", tag: str = "1") -> Image:
    directory = build_layer()
    diff_id = (directory / "diff_id").read_text().strip()
    return single_layer_image(repository, tag, directory / "layer.tar.gz", diff_id,
                              cmd=["sleep", "infinity"])
