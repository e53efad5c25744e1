"""Call counters of an emulator: requests per endpoint key and a log of recent requests
with the status each got (None while unanswered, or when the connection was dropped)."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, replace

LOG_SIZE = 10_000  # the request log keeps the most recent requests only


@dataclass
class RequestRecord:
    """One request as the emulator saw it; status None means no answer was sent (yet)."""
    method: str
    path: str
    endpoint: str
    status: int | None = None
    fault: str | None = None


class CallLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._log: deque[RequestRecord] = deque(maxlen=LOG_SIZE)

    def record(self, method: str, path: str, endpoint: str) -> RequestRecord:
        record = RequestRecord(method, path, endpoint)
        with self._lock:
            self._calls[endpoint] += 1
            self._log.append(record)
        return record

    def finish(self, record: RequestRecord, status: int | None, fault: str | None) -> None:
        with self._lock:
            record.status, record.fault = status, fault

    @property
    def calls(self) -> Counter[str]:
        """Snapshot: endpoint key -> number of requests received."""
        with self._lock:
            return Counter(self._calls)

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request in arrival order."""
        with self._lock:
            return [replace(r) for r in self._log]

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._log.clear()
