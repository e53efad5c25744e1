"""Pushing the gateway's config to Caddy's admin API (loopback only): POST /load with
the whole config when it differs from what Caddy was last given, and every so often a
read-back, so a restarted Caddy (an empty config) is noticed and loaded again."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agentspaces_vm.caddy import CaddyAdmin, CaddyAdminError

log = logging.getLogger(__name__)


class CaddyLoader:
    def __init__(self, admin_address: str, resync_seconds: float = 30.0,
                 timeout: float = 10.0) -> None:
        self._admin = CaddyAdmin(admin_address, timeout=timeout)
        self._resync = resync_seconds
        self._loaded: dict[str, Any] | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self.loads = 0  # POST /load calls that Caddy accepted
        self.last_error: str | None = None

    @property
    def loaded(self) -> dict[str, Any] | None:
        return self._loaded

    async def apply(self, config: dict[str, Any], now: float) -> bool:
        """True when Caddy runs `config` (pushed now or before); False to retry later."""
        async with self._lock:
            try:
                if self._loaded == config and now - self._checked_at >= self._resync:
                    self._checked_at = now
                    if await asyncio.to_thread(self._admin.config) != config:
                        log.info("caddy runs another config (restarted?); loading again")
                        self._loaded = None
                if self._loaded != config:
                    await asyncio.to_thread(self._admin.load, config)
                    self._loaded = config
                    self._checked_at = now
                    self.loads += 1
                if self.last_error:
                    log.info("caddy admin API reachable again")
                self.last_error = None
                return True
            except (CaddyAdminError, ValueError) as err:
                if str(err) != self.last_error:
                    log.warning("caddy config not loaded yet: %s", err)
                self.last_error = str(err)
                return False
