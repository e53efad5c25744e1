"""The agent's part uploads: several parts at a time, in bounded memory, assembled by
number, and the first failure stops the rest. The PUT itself is replaced here;
tests/component/test_backup_s3.py makes real ones."""

from __future__ import annotations

import threading
import time

import pytest

from agentspaces_vm import backup as agent

MIB = 1024 * 1024
URLS = tuple(f"https://bucket.example/part{n}" for n in range(1, 21))


@pytest.mark.parametrize(("part_size", "slots"), [
    (5 * MIB, agent.PARALLEL_UPLOADS), (16 * MIB, 3), (21 * MIB, 2),
    (32 * MIB, 1), (5 * 1024 * MIB, 1)])
def test_upload_slots_keep_part_buffers_within_part_memory(part_size: int, slots: int) -> None:
    assert agent.upload_slots(part_size) == slots
    if slots > 1:  # one part bigger than PART_MEMORY still uploads, one at a time
        assert (slots + 1) * part_size <= agent.PART_MEMORY


class _Recorder:
    """Stands in for the PUT: counts parts in flight, fails the parts it is told to."""

    def __init__(self, delay: float, fail: frozenset[int] = frozenset()) -> None:
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.done: list[int] = []
        self.bodies: dict[int, bytes] = {}

    def put(self, number: int, data: memoryview) -> str:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(self.delay * (2 if number == 1 else 1))  # part 1 is the slow one
            if number in self.fail:
                raise agent.BackupError(f"part {number}: HTTP 403", reason="UploadFailed")
            self.bodies[number] = bytes(data)
            return f'"etag-{number}"'
        finally:
            with self.lock:
                self.in_flight -= 1
                self.done.append(number)


def _upload(uploader: agent._Uploader, parts: int, size: int) -> int:
    """Fill and submit `parts` buffers as the part writer does; the most buffers held."""
    uploader.start()
    try:
        for number in range(1, parts + 1):
            buffer = uploader.take_buffer()
            buffer[:size] = bytes([number]) * size
            uploader.submit(number, buffer, size)
        uploader.close()
        uploader.join(timeout=30)
    except BaseException:
        uploader.cancel()
        uploader.join(timeout=30)
        raise
    return uploader._allocated


def test_parts_upload_concurrently_in_bounded_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder(delay=0.05)
    uploader = agent._Uploader(URLS, 1024, workers=3)
    monkeypatch.setattr(uploader, "_put", recorder.put)
    allocated = _upload(uploader, 12, 1000)

    uploader.check()
    assert allocated == 4  # three uploading, one filling: never more
    assert recorder.most == 3
    assert recorder.done[0] != 1  # part 1 was slow: later parts finished first
    assert sorted(uploader.etags) == list(range(1, 13))
    assert all(recorder.bodies[n] == bytes([n]) * 1000 for n in range(1, 13))


def test_the_first_failure_stops_every_other_part(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder(delay=0.05, fail=frozenset({2}))
    uploader = agent._Uploader(URLS, 1024, workers=3)
    monkeypatch.setattr(uploader, "_put", recorder.put)
    with pytest.raises(agent.BackupError) as info:
        _upload(uploader, 20, 1000)

    assert info.value.reason == "UploadFailed" and "part 2" in str(info.value)
    assert uploader.cancelled.is_set() and not uploader.is_alive()
    # Only parts already handed to a worker were tried; the writer stopped at once.
    assert len(recorder.done) <= 1 + 4 < 20

