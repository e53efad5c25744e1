"""Entry point: `python3 agent.pyz --config /etc/agentspaces/agent.json`.

Also `python -m agentspaces_vm --config ...` from a checkout. Exit codes: 0 after
SIGTERM/SIGINT, 2 for a bad configuration or template, 1 when a listener cannot bind.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from agentspaces_vm import __version__
from agentspaces_vm.config import ConfigError, load_config
from agentspaces_vm.templates import TemplateNotFound, load_template

log = logging.getLogger("agentspaces_vm")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agentspaces-agent",
                                     description="agentspaces workspace agent")
    parser.add_argument("--config", type=Path, default=Path("/etc/agentspaces/agent.json"),
                        help="agent.json (default: %(default)s)")
    parser.add_argument("--caddy-template", type=Path, default=None,
                        help="Caddy config template (default: the one shipped in the package)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=__version__)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        template = (args.caddy_template.read_text(encoding="utf-8") if args.caddy_template
                    else load_template("caddy.json"))
    except (ConfigError, TemplateNotFound, OSError) as exc:
        log.error("%s", exc)
        return 2

    # Imported after the config is known good: these pull in the rest of the agent.
    from agentspaces_vm.agent import Agent
    from agentspaces_vm.server import build_servers

    agent = Agent(config, caddy_template=template)
    try:
        api, local = build_servers(agent)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5},
                                name=name, daemon=True)
               for name, srv in (("api", api), ("local", local))]
    for thread in threads:
        thread.start()
    agent.start()
    log.info("agent %s for %s/%s: api https://%s, local http://%s, simulate=%s", __version__,
             config.workspace.namespace, config.workspace.name, config.api_listen,
             config.local_listen, config.simulate)
    stop.wait()
    for srv in (api, local):
        srv.shutdown()
        srv.server_close()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
