"""The operator's periodic malloc_trim: it finds glibc's call, the call gives a
fragmented heap's free pages back, and the loop calls it until cancelled."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap

from agentspaces.memory_trim import malloc_trim, trim_every

# Objects over 512 bytes come from malloc, not Python's own allocator. Keeping one in
# 40 pins the heap's top and leaves most pages below it free but not returned.
_FRAGMENT_AND_TRIM = textwrap.dedent("""
    from agentspaces.memory_trim import malloc_trim

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    kept, dropped = [], []
    for i in range(100_000):
        (kept if i % 40 == 0 else dropped).append(bytes(1000 + i % 7))
    del dropped
    trim = malloc_trim()
    before = rss()
    released = trim()
    print(before, rss(), released, len(kept))
""")


def test_trim_gives_a_fragmented_heaps_free_pages_back() -> None:
    assert malloc_trim() is not None  # glibc, as on the operator's image
    run = subprocess.run([sys.executable, "-c", _FRAGMENT_AND_TRIM], capture_output=True,
                         text=True, timeout=60, check=True)
    before, after, released, _ = run.stdout.split()
    assert released == "True"
    assert int(before) - int(after) > 40 * 1024 * 1024, run.stdout  # of ~95 MiB freed


def test_the_loop_trims_every_interval_until_cancelled() -> None:
    calls: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        third = asyncio.Event()

        def trim() -> bool:
            calls.append(loop.time())
            if len(calls) == 3:
                third.set()
            return True

        task = asyncio.create_task(trim_every(0.01, trim))
        await asyncio.wait_for(third.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        count = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == count  # nothing after the cancel

    asyncio.run(scenario())
    assert all(later - earlier >= 0.01 for earlier, later in itertools.pairwise(calls))
