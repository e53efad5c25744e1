"""The wake gateway (`agentspaces gateway`, docs/wake-gateway.md): an always-on Caddy,
configured through its admin API, that answers a stopped workspace's names.

While a workspace is stopped its DNS records point here. The gateway app behind Caddy
asks for the workspace's password (or a share link for a `link` port), shows a
"waking" page to a signed-in browser navigation and wakes the workspace by annotating
it; once the workspace is Ready, Caddy proxies its names to the new server until the
records pointing back at the server have outlived their TTL.

Modules, each with one job:
- served: the pure view of a Workspace (and its class) the gateway serves, and where
  its names are routed at a given time;
- caddy_config: the whole Caddy JSON config for those routes (pure);
- policy: which requests may wake, rate limits, the on-demand TLS question (pure);
- access: the workspaces' access Secrets, read only for served workspaces, cached;
- source: the Kubernetes watches (and the patch that wakes);
- caddy_admin: pushing the config to Caddy's admin API;
- pages / app: the waking page and the HTTP app behind Caddy;
- service: wiring it all together (`start_gateway`); serve: the CLI.
"""
