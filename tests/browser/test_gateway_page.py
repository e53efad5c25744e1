"""The wake gateway's waking page in Debian's chromium: sign in at a stopped workspace's
URL, see "Waking", watch the phase change as the operator would report it, and land on
the new VM at the same URL once it is Ready, with the session the gateway made. The
real Caddy and gateway on loopback (tests/support/gateway_rig.py); chromium resolves
the workspace's names to the gateway's address."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from tests.component.agent_harness import pick_loopback
from tests.support.dashboard import chromium_path
from tests.support.gateway import BASE_DOMAIN, running_at, starting
from tests.support.gateway_rig import NAME, NS, PASSWORD, new_vm, running_rig

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


async def test_sign_in_wake_and_land_on_the_new_vm(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    path = chromium_path()
    assert path, "Debian's chromium is not installed (scripts/test.sh installs it)"
    async with running_rig(tmp_path) as rig, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=path, headless=True,
            args=["--no-sandbox", f"--host-resolver-rules=MAP *.{BASE_DOMAIN} {rig.addr}"])
        vm = web.AppRunner(web.Application())
        vm.app.router.add_route("*", "/{tail:.*}", new_vm(rig))
        await vm.setup()
        try:
            page = await (await browser.new_context()).new_page()
            page.set_default_timeout(20_000)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error"
                    else None)
            url = f"http://{rig.host}:{rig.port}/src/app.py?line=3"
            await page.goto(url)
            assert await page.title() == f"Sign in - {rig.host}:{rig.port}"
            assert rig.source.patches == []
            await page.fill('input[name="password"]', PASSWORD)
            await page.click('button[type="submit"]')
            await page.wait_for_selector("#waking")
            assert await page.title() == f"Waking {NAME}"
            assert page.url == url
            assert len(rig.source.patches) == 1
            # The sign-in page came with a 401 (logged as a failed load); from here on,
            # nothing may fail: the page's script, its CSP, its polls, the reload.
            problems.clear()

            rig.source.put(starting(rig.source.get(NS, NAME), "waiting for the agent"))
            await rig.sync()
            # The page's own polling shows it (locators: its CSP forbids eval'd waits).
            await expect(page.locator("#phase")).to_have_text("Starting")
            assert "creating server <b>cx23</b>" in await page.inner_text("#conditions")

            vm_addr = pick_loopback()
            await web.TCPSite(vm, vm_addr, rig.port).start()
            now = rig.clock()
            rig.source.put(running_at(rig.source.get(NS, NAME), vm_addr, ready_at=now,
                                      changed_at=now))
            await rig.sync()
            await expect(page.locator("body")).to_contain_text('"vm": true')
            assert page.url == url
            assert f'"host": "{rig.host}:{rig.port}"' in await page.inner_text("body")
            assert len(rig.source.patches) == 1
            assert problems == []  # nothing refused by the page's CSP, no script error
        finally:
            await vm.cleanup()
            await browser.close()
