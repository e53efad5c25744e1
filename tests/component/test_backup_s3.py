"""Backups end to end against a real S3 server (moto) on loopback.

The operator side goes through boto3 (S3ObjectStore); the agent side only ever sees
presigned URLs and uses plain HTTP PUT/GET, sometimes through a fault-injecting proxy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import logging
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from moto.server import ThreadedMotoServer

from agentspaces.clouds.r2 import S3ObjectStore, make_client
from agentspaces.lifeline import die_with_parent
from agentspaces.persistence import backups as bk
from agentspaces.persistence import keys, manifest_auth
from agentspaces_vm import backup as agent
from agentspaces_vm import backup_format as bf

MIB = 1024 * 1024
PART = 5 * MIB
T0 = datetime(2026, 11, 27, 4, 19, tzinfo=UTC)


# --- servers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def store(moto_endpoint: str) -> S3ObjectStore:
    bucket = f"bk-{uuid.uuid4().hex[:12]}"
    make_client(moto_endpoint, "test", "test", region="us-east-1").create_bucket(Bucket=bucket)
    # The adapter as the operator builds it for R2: region auto, path style.
    return S3ObjectStore.connect(moto_endpoint, bucket, "test", "test")


class FaultProxy:
    """Forwards requests to the S3 server; can fail or delay chosen part PUTs or cut a
    GET short. Records (method, partNumber, body length, status) of every request, in
    the order they finished, and the most PUTs seen in flight at once."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.put_failures: dict[int, list[int]] = {}
        self.cut_next_get = False
        self.put_delays: dict[int, float] = {}
        self.puts_in_flight = self.max_puts_in_flight = 0
        self.requests: list[tuple[str, int | None, int, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def netloc(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def route(self, url: str) -> str:
        return url.replace(self.upstream, self.netloc, 1)

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        if req.command != "PUT":
            self._forward(req)
            return
        with self.lock:
            self.puts_in_flight += 1
            self.max_puts_in_flight = max(self.max_puts_in_flight, self.puts_in_flight)
        try:
            self._forward(req)
        finally:
            with self.lock:
                self.puts_in_flight -= 1

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        query = parse_qs(urlsplit(req.path).query)
        part = int(query["partNumber"][0]) if "partNumber" in query else None
        with self.lock:
            planned = self.put_failures.get(part or 0) if req.command == "PUT" else None
            fail = planned.pop(0) if planned else None
            cut = req.command == "GET" and self.cut_next_get
            if cut:
                self.cut_next_get = False
            delay = self.put_delays.get(part or 0, 0.0) if req.command == "PUT" else 0.0
        time.sleep(delay)
        if fail is not None:
            req.send_response(fail)
            req.send_header("Content-Length", "0")
            req.end_headers()
            self._record(req.command, part, len(body), fail)
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in req.headers.items()
                       if k.lower() not in ("host", "connection")}
            conn.request(req.command, req.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        req.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "server", "date"):
                req.send_header(name, value)
        req.end_headers()
        req.wfile.write(data[:len(data) // 2] if cut else data)
        self._record(req.command, part, len(body), resp.status)

    def _record(self, method: str, part: int | None, length: int, status: int) -> None:
        with self.lock:
            self.requests.append((method, part, length, status))


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    fault = FaultProxy(moto_endpoint)
    fault.thread.start()
    try:
        yield fault
    finally:
        fault.server.shutdown()
        fault.server.server_close()
        fault.thread.join(timeout=10)


# --- trees --------------------------------------------------------------------------------

def make_tree(root: Path, big: int = 12 * MIB, generation: int = 0) -> None:
    """A workspace-like tree with everything tar must carry over."""
    root.mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text(f"print('generation {generation}')\n" * 50)
    os.link(root / "src" / "main.py", root / "src" / "main-hardlink.py")
    (root / "src" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "src" / "run.sh", 0o4755)  # setuid survives too
    (root / "secret.txt").write_text("owned by someone else\n")
    os.chmod(root / "secret.txt", 0o600)
    os.chown(root / "secret.txt", 1234, 5678)
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))
    (root / "empty-dir").mkdir()
    os.chmod(root / "empty-dir", 0o750)
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o1777)
    (root / "données").mkdir()
    (root / "données" / "été.txt").write_text("unicode names\n")
    (root / ".claude").mkdir()
    (root / ".claude" / "settings.json").write_text('{"hooks": {}}\n')
    (root / "node_modules" / "pkg").mkdir(parents=True)
    (root / "node_modules" / "pkg" / "index.js").write_text("module.exports = 1\n")
    os.symlink("src/main.py", root / "link-relative")
    os.symlink("nowhere/at/all", root / "link-dangling")
    # Goes up and back down, staying inside (links out are dropped: test_restore_hostile).
    os.symlink("src/../link-relative", root / "link-up-and-down")
    # Distinct nanosecond mtimes, set bottom-up so parents keep theirs.
    stamp = 1_600_000_000_123_456_789 + generation * 1_000_000_000
    for i, (dirpath, dirnames, filenames) in enumerate(os.walk(root, topdown=False)):
        for j, name in enumerate(sorted(dirnames + filenames)):
            path = Path(dirpath) / name
            if not path.is_dir() or path.is_symlink():
                os.utime(path, ns=(stamp, stamp + i * 1000 + j), follow_symlinks=False)
        os.utime(dirpath, ns=(stamp, stamp + i * 1000 + 999))


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must bring back, per relative path."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath) / name if name != "." else Path(dirpath)
            rel = str(path.relative_to(root))
            if name == "." and rel in out:
                continue
            st = os.lstat(path)
            common = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                      st.st_mtime_ns)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = (*common, os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = (*common, st.st_size, st.st_nlink,
                            hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = common
    return out


def without(snap: dict[str, tuple[Any, ...]], prefix: str) -> dict[str, tuple[Any, ...]]:
    return {k: v for k, v in snap.items() if k != prefix and not k.startswith(prefix + "/")}


def leftovers(root: Path) -> list[str]:
    """Restore scratch directories left inside or next to the root."""
    scratch = (agent.STAGING_PREFIX, agent.TRASH_PREFIX)
    names = [p.name for p in root.parent.iterdir() if any(s in p.name for s in scratch)]
    if root.is_dir():
        names += [p.name for p in root.iterdir() if p.name.startswith(scratch)]
    return names


# --- helpers ------------------------------------------------------------------------------

def workspace(uid: str = "1a2b3c4d") -> bk.BackupLocation:
    return bk.BackupLocation.for_workspace("agentspaces/", "default", "demo", uid)


def run_backup(store: S3ObjectStore, ws: bk.BackupLocation, data_key: keys.DataKey, root: Path,
               now: datetime, proxy: FaultProxy | None = None, max_parts: int = 20,
               exclude: tuple[str, ...] = ()) -> tuple[bk.BackupRecord, dict[str, Any],
                                                       list[dict[str, Any]]]:
    """Begin, back up from the plan's wire form (as the agent receives it), commit the
    result's wire form (as the operator reads it)."""
    plan, pending = bk.begin_backup(store, ws, data_key, now, PART, max_parts, 600,
                                    exclude=exclude)
    if proxy is not None:
        plan = replace(plan, part_urls=tuple(map(proxy.route, plan.part_urls)))
    events: list[dict[str, Any]] = []
    result = agent.backup(plan.to_json(), root, events.append).to_json()
    record = bk.commit_backup(store, pending, result, data_key, now + timedelta(seconds=5))
    return record, result, events


def restore(store: S3ObjectStore, record: bk.BackupRecord, data_key: keys.DataKey,
            target: Path, proxy: FaultProxy | None = None) -> None:
    plan = bk.restore_plan(store, record, data_key, 600, datetime.now(UTC))
    if proxy is not None:
        plan = replace(plan, url=proxy.route(plan.url))
    agent.restore(plan.to_json(), target)


@pytest.fixture
def data_key() -> keys.DataKey:
    return keys.DataKey(keys.new_key_id(), keys.generate_data_key())


# --- tests --------------------------------------------------------------------------------

def test_round_trip_is_byte_identical(store: S3ObjectStore, proxy: FaultProxy,
                                      data_key: keys.DataKey, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    make_tree(source)
    expected = without(snapshot(source), "node_modules")
    ws = workspace()
    record, result, events = run_backup(store, ws, data_key, source, T0, proxy,
                                        exclude=("node_modules",))

    assert record.object_key == "agentspaces/default/demo-1a2b3c4d/20261127T041900Z.tar.zst.enc"
    # Parts go up several at a time, so they may finish in any order: each exactly once.
    puts = sorted((r for r in proxy.requests if r[0] == "PUT"), key=lambda r: r[1] or 0)
    assert [r[1] for r in puts] == list(range(1, len(puts) + 1)) and len(puts) >= 3
    assert all(length == PART for _, _, length, _ in puts[:-1])  # R2: equal parts
    assert 0 < puts[-1][2] <= PART
    assert sum(r[2] for r in puts) == result["size"] == record.size
    stored = store.get_object(record.object_key)
    assert stored.startswith(bf.MAGIC)
    assert hashlib.sha256(stored).hexdigest() == record.sha256
    assert b"generation 0" not in stored and b"owned by someone else" not in stored
    assert events[-1]["phase"] == "uploaded"
    assert events[-1]["partsUploaded"] == len(result["parts"])
    manifest = json.loads(store.get_object(record.manifest_key))
    assert manifest["size"] == record.size and manifest["keyId"] == data_key.key_id
    assert base64.b64encode(data_key.material).decode() not in json.dumps(manifest)

    fresh = tmp_path / "vm" / "workspaces"  # does not exist yet
    restore(store, record, data_key, fresh, proxy)
    assert snapshot(fresh) == expected
    assert os.stat(fresh / "src" / "main.py").st_ino == \
        os.stat(fresh / "src" / "main-hardlink.py").st_ino

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "stale.txt").write_text("from an older life")
    (existing / "src").mkdir()
    (existing / f"{agent.STAGING_PREFIX}crashed").mkdir()  # scratch of a crashed restore
    monkeypatch.chdir(tmp_path)
    restore(store, record, data_key, Path("existing"))  # a relative root works too
    assert snapshot(existing) == expected
    assert leftovers(existing) == [] and leftovers(fresh) == []


def test_restore_resumes_a_dropped_download(store: S3ObjectStore, proxy: FaultProxy,
                                            data_key: keys.DataKey, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source, big=8 * MIB)
    record, _, _ = run_backup(store, workspace(), data_key, source, T0)
    proxy.cut_next_get = True
    target = tmp_path / "target"
    restore(store, record, data_key, target, proxy)
    assert snapshot(target) == snapshot(source)
    gets = [r for r in proxy.requests if r[0] == "GET"]
    assert len(gets) == 2  # the cut one, then a Range request for the rest


def test_the_vm_reaches_the_bucket_only_at_the_vm_endpoint(
        moto_endpoint: str, proxy: FaultProxy, data_key: keys.DataKey, tmp_path: Path) -> None:
    """storage.vmEndpoint: the presigned URLs name the address the VM reaches the bucket
    at (here the proxy), while the operator's calls go straight to the endpoint (the
    proxy forwards only PUT and GET: a create, list or delete through it would fail)."""
    bucket = f"vm-{uuid.uuid4().hex[:12]}"
    make_client(moto_endpoint, "test", "test", region="us-east-1").create_bucket(Bucket=bucket)
    store = S3ObjectStore.connect(moto_endpoint, bucket, "test", "test",
                                  vm_endpoint=f"http://{proxy.netloc}")
    source = tmp_path / "source"
    make_tree(source, big=2 * PART)
    record, result, _ = run_backup(store, workspace(), data_key, source, T0)  # URLs as signed
    puts = [r for r in proxy.requests if r[0] == "PUT"]
    assert len(puts) == len(result["parts"]) >= 2
    assert sum(r[2] for r in puts) == record.size and {r[3] for r in puts} == {200}

    restore(store, record, data_key, tmp_path / "restored")
    assert snapshot(tmp_path / "restored") == snapshot(source)
    assert [r[0] for r in proxy.requests if r[0] != "PUT"] == ["GET"]
    assert len(store.list_objects(workspace().prefix)) == 2  # data and manifest
    store.close()


def test_failed_part_put_is_retried(store: S3ObjectStore, proxy: FaultProxy,
                                    data_key: keys.DataKey, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    proxy.put_failures[2] = [500, 503]
    record, _, _ = run_backup(store, workspace(), data_key, source, T0, proxy)
    attempts = [r[3] for r in proxy.requests if r[0] == "PUT" and r[1] == 2]
    assert attempts == [500, 503, 200]
    target = tmp_path / "target"
    restore(store, record, data_key, target)
    assert snapshot(target) == snapshot(source)


def test_failed_upload_commits_nothing(store: S3ObjectStore, proxy: FaultProxy,
                                       data_key: keys.DataKey, tmp_path: Path) -> None:
    ws = workspace()
    first = tmp_path / "first"
    make_tree(first, big=1 * MIB)
    previous, _, _ = run_backup(store, ws, data_key, first, T0)

    second = tmp_path / "second"
    make_tree(second, generation=1)
    plan, pending = bk.begin_backup(store, ws, data_key, T0 + timedelta(hours=1), PART, 20, 600)
    plan = replace(plan, part_urls=tuple(map(proxy.route, plan.part_urls)))
    proxy.put_failures[2] = [403] * 10  # e.g. the URL expired: not worth retrying
    with pytest.raises(agent.BackupError) as info:
        agent.backup(plan, second, lambda _: None)
    assert info.value.reason == "UploadFailed"
    assert "X-Amz" not in str(info.value) and "http" not in str(info.value)
    assert [r[3] for r in proxy.requests if r[1] == 2] == [403]

    assert store.head_object(pending.manifest_key) is None
    assert bk.list_backups(store, ws) == [previous]
    uploads = store.list_multipart_uploads(ws.prefix)
    assert [u.upload_id for u in uploads] == [pending.upload_id]
    assert bk.abort_stale_uploads(store, ws) == [pending.object_key]
    assert store.list_multipart_uploads(ws.prefix) == []
    target = tmp_path / "target"
    restore(store, bk.latest_backup(store, ws) or previous, data_key, target)
    assert snapshot(target) == snapshot(first)


def test_parts_uploaded_in_parallel_are_assembled_in_order(
        store: S3ObjectStore, proxy: FaultProxy, data_key: keys.DataKey, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    proxy.put_delays[1] = 2.0  # part 1 finishes after the parts uploaded next to it
    record, result, _ = run_backup(store, workspace(), data_key, source, T0, proxy)

    finished = [r[1] for r in proxy.requests if r[0] == "PUT"]
    assert len(finished) >= 3 and finished[0] != 1 and proxy.max_puts_in_flight >= 2
    assert sorted(finished) == list(range(1, len(finished) + 1))
    assert [part["partNumber"] for part in result["parts"]] == sorted(finished)
    stored = store.get_object(record.object_key)
    assert hashlib.sha256(stored).hexdigest() == record.sha256 == result["sha256"]
    target = tmp_path / "target"
    restore(store, record, data_key, target)
    assert snapshot(target) == snapshot(source)


def test_a_failed_part_stops_the_backup_and_its_upload_is_aborted(
        store: S3ObjectStore, proxy: FaultProxy, data_key: keys.DataKey, tmp_path: Path) -> None:
    ws = workspace()
    source = tmp_path / "source"
    make_tree(source, big=40 * MIB)  # 8 parts and more
    plan, pending = bk.begin_backup(store, ws, data_key, T0, PART, 20, 600)
    plan = replace(plan, part_urls=tuple(map(proxy.route, plan.part_urls)))
    proxy.put_delays[1] = 1.0  # still in flight when part 2 fails
    proxy.put_failures[2] = [403]
    with pytest.raises(agent.BackupError) as info:
        agent.backup(plan, source, lambda _: None)
    assert info.value.reason == "UploadFailed" and "part 2" in str(info.value)

    puts = [r for r in proxy.requests if r[0] == "PUT"]
    # Parts already in flight may finish; none starts after the failure was seen.
    assert [r[3] for r in puts if r[1] == 2] == [403]
    assert len(puts) <= 1 + agent.upload_slots(PART) + 1 < 8
    assert store.head_object(pending.object_key) is None
    assert store.head_object(pending.manifest_key) is None
    bk.abort_backup(store, pending)  # what the operator does with a failed backup
    assert store.list_multipart_uploads(ws.prefix) == []
    assert store.list_objects(ws.prefix) == []


AGENT_PEAK_RSS = """
import json, sys
from pathlib import Path
from agentspaces_vm.backup import backup

backup(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), lambda _: None)
status = Path("/proc/self/status").read_text().splitlines()
print([int(line.split()[1]) for line in status if line.startswith("VmHWM:")][0])
"""


def test_backup_memory_is_bounded_by_the_part_buffers(
        store: S3ObjectStore, data_key: keys.DataKey, tmp_path: Path) -> None:
    """16 MiB parts (the default) and a tree of 160 MiB that does not compress: the
    agent holds at most PART_MEMORY of parts plus its interpreter, never the archive."""
    source = tmp_path / "source"
    make_tree(source, big=160 * MIB)
    part = 16 * MIB
    plan, pending = bk.begin_backup(store, workspace(), data_key, T0, part, 20, 600)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_json()))
    out = subprocess.run([sys.executable, "-c", AGENT_PEAK_RSS, str(plan_file), str(source)],
                         capture_output=True, text=True, timeout=300, check=True)
    peak_mib = int(out.stdout.strip()) / 1024
    assert (agent.upload_slots(part) + 1) * part <= agent.PART_MEMORY
    assert peak_mib <= 128, f"agent peak RSS {peak_mib:.0f} MiB"
    bk.abort_backup(store, pending)


AGENT_KILLED_MIDWAY = """
import json, os, signal, sys
from pathlib import Path
from agentspaces_vm.backup import backup

def progress(info):
    if info.get("partsUploaded", 0) >= 1:
        os.kill(os.getpid(), signal.SIGKILL)

backup(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), progress)
"""


def test_agent_killed_midway_commits_nothing(store: S3ObjectStore, data_key: keys.DataKey,
                                             tmp_path: Path) -> None:
    ws = workspace()
    first = tmp_path / "first"
    make_tree(first, big=1 * MIB)
    previous, _, _ = run_backup(store, ws, data_key, first, T0)

    second = tmp_path / "second"
    make_tree(second, big=16 * MIB, generation=1)
    plan, pending = bk.begin_backup(store, ws, data_key, T0 + timedelta(hours=1), PART, 20, 600)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_json()))
    proc = subprocess.Popen([sys.executable, "-c", AGENT_KILLED_MIDWAY, str(plan_file),
                             str(second)], start_new_session=True,
                            preexec_fn=die_with_parent)
    try:
        assert proc.wait(timeout=120) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # tar/zstd children, if still around
        proc.wait(timeout=10)

    assert store.head_object(pending.manifest_key) is None
    assert store.head_object(pending.object_key) is None
    assert bk.latest_backup(store, ws) == previous
    assert [u.upload_id for u in store.list_multipart_uploads(ws.prefix)] == [pending.upload_id]
    # The next reconcile cleans it up, sparing an upload that is still running.
    assert bk.abort_stale_uploads(store, ws, keep_upload_ids={pending.upload_id}) == []
    assert bk.abort_stale_uploads(store, ws) == [pending.object_key]
    assert store.list_multipart_uploads(ws.prefix) == []
    target = tmp_path / "target"
    restore(store, previous, data_key, target)
    assert snapshot(target) == snapshot(first)


def test_backup_larger_than_the_plan_allows(store: S3ObjectStore, data_key: keys.DataKey,
                                            tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source, big=6 * MIB)
    plan, pending = bk.begin_backup(store, workspace(), data_key, T0, PART, 1, 600)
    with pytest.raises(agent.BackupError) as info:
        agent.backup(plan, source, lambda _: None)
    assert info.value.reason == "BackupTooLarge"
    bk.abort_backup(store, pending)
    assert store.list_multipart_uploads(workspace().prefix) == []


def test_commit_rejects_an_inconsistent_result(store: S3ObjectStore, data_key: keys.DataKey,
                                               tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source, big=7 * MIB)
    plan, pending = bk.begin_backup(store, workspace(), data_key, T0, PART, 20, 600)
    result = agent.backup(plan, source, lambda _: None).to_json()
    for broken in ({**result, "parts": result["parts"][1:]},
                   {**result, "size": result["size"] + PART},
                   {**result, "sha256": "nope"},
                   {**result, "id": "20991231T000000Z"}):
        with pytest.raises(bk.CommitFailed):
            bk.commit_backup(store, pending, broken, data_key, datetime.now(UTC))
    assert store.head_object(pending.manifest_key) is None
    with pytest.raises(bk.CommitFailed):  # signed with another workspace's key: never
        bk.commit_backup(store, pending, result, keys.DataKey("dk-other", data_key.material),
                         datetime.now(UTC))
    record = bk.commit_backup(store, pending, result, data_key, datetime.now(UTC))
    # Committing again (operator crashed before recording it) is harmless.
    again = bk.commit_backup(store, pending, result, data_key, datetime.now(UTC))
    assert again.sha256 == record.sha256
    assert bk.list_backups(store, workspace())[0].sha256 == record.sha256


def test_prune_keeps_the_newest(store: S3ObjectStore, data_key: keys.DataKey,
                                tmp_path: Path) -> None:
    ws = workspace()
    records, trees = [], []
    for generation in range(4):
        tree = tmp_path / f"gen{generation}"
        make_tree(tree, big=0, generation=generation)
        trees.append(tree)
        records.append(run_backup(store, ws, data_key, tree,
                                  T0 + timedelta(hours=generation))[0])

    def orphan(at: datetime) -> str:
        """A completed upload whose manifest was never written."""
        plan, pending = bk.begin_backup(store, ws, data_key, at, PART, 2, 600)
        result = agent.backup(plan, trees[0], lambda _: None)
        store.complete_multipart_upload(pending.object_key, pending.upload_id, [
            bk.CompletedPart(p.number, p.etag) for p in result.parts])
        return pending.object_key

    old_orphan = orphan(T0 + timedelta(minutes=30))
    new_orphan = orphan(T0 + timedelta(hours=5))  # maybe a commit in progress: keep
    store.put_object(ws.prefix + "README.txt", b"not ours to delete", "text/plain")

    deleted = bk.prune(store, ws, keep=2)
    assert set(deleted) == {records[0].manifest_key, records[0].object_key,
                            records[1].manifest_key, records[1].object_key, old_orphan}
    assert [r.backup_id for r in bk.list_backups(store, ws)] == \
        [records[2].backup_id, records[3].backup_id]
    left = {o.key for o in store.list_objects(ws.prefix)}
    assert new_orphan in left and ws.prefix + "README.txt" in left
    assert bk.prune(store, ws, keep=2) == []
    target = tmp_path / "target"
    restore(store, records[2], data_key, target)
    assert snapshot(target) == snapshot(trees[2])


def test_class_key_rotation_keeps_backups_readable(store: S3ObjectStore,
                                                   tmp_path: Path) -> None:
    old_class_key, new_class_key = os.urandom(32), os.urandom(32)
    data_key, stored = keys.create_data_key(old_class_key)
    secret = keys.encode_key_secret(stored)
    source = tmp_path / "source"
    make_tree(source, big=2 * MIB)
    ws = workspace()
    record, _, _ = run_backup(store, ws, data_key, source, T0)
    before = {o.key: o.etag for o in store.list_objects(ws.prefix)}

    rotated = keys.rotate_key_secret(old_class_key, new_class_key, secret)
    assert rotated is not None and rotated != secret
    assert {o.key: o.etag for o in store.list_objects(ws.prefix)} == before
    reopened = keys.open_data_key(new_class_key, keys.decode_key_secret(rotated))
    with pytest.raises(keys.ClassKeyMismatch):
        keys.open_data_key(old_class_key, keys.decode_key_secret(rotated))
    target = tmp_path / "target"
    restore(store, bk.latest_backup(store, ws) or record, reopened, target)
    assert snapshot(target) == snapshot(source)


def test_on_delete_delete_removes_everything_of_that_workspace(
        store: S3ObjectStore, data_key: keys.DataKey, tmp_path: Path) -> None:
    doomed, neighbour = workspace("aaaa"), workspace("aaaab")  # prefix of each other's uid
    source = tmp_path / "source"
    make_tree(source, big=0)
    for hour in range(2):
        run_backup(store, doomed, data_key, source, T0 + timedelta(hours=hour))
    bk.begin_backup(store, doomed, data_key, T0 + timedelta(hours=3), PART, 2, 600)
    kept, _, _ = run_backup(store, neighbour, data_key, source, T0)

    assert bk.delete_all(store, doomed) == 4
    assert store.list_objects(doomed.prefix) == []
    assert store.list_multipart_uploads(doomed.prefix) == []
    assert bk.list_backups(store, neighbour) == [kept]


def test_retained_backup_restores_into_a_new_workspace(
        store: S3ObjectStore, tmp_path: Path) -> None:
    class_key = os.urandom(32)
    data_key, stored = keys.create_data_key(class_key)
    old_ws = workspace("old-uid")
    source = tmp_path / "source"
    make_tree(source, big=1 * MIB)
    run_backup(store, old_ws, data_key, source, T0)

    # The new Workspace gets a copy of the retained key Secret and names the prefix.
    copied = dict(keys.encode_key_secret(stored))
    key = keys.open_data_key(class_key, keys.decode_key_secret(copied))
    retained = bk.BackupLocation.from_prefix(old_ws.prefix.rstrip("/"))
    record = bk.latest_backup(store, retained)
    assert record is not None
    target = tmp_path / "new-vm"
    restore(store, record, key, target)
    assert snapshot(target) == snapshot(source)
    new_ws = workspace("new-uid")
    later, _, _ = run_backup(store, new_ws, key, target, T0 + timedelta(days=1))
    assert later.object_key.startswith(new_ws.prefix)
    assert bk.latest_backup(store, retained) == record


def _records(blob: bytes) -> list[int]:
    """Byte offsets where each chunk record starts."""
    header = bf.parse_header(blob)
    assert header is not None
    pos, starts = len(header.raw), []
    while pos < len(blob):
        starts.append(pos)
        pos += bf.RECORD_HEADER_SIZE + struct.unpack_from(">IBI", blob, pos)[2]
    return starts


@pytest.mark.parametrize("damage, reason, problem", [
    ("tampered", "BackupCorrupt", "tampered"),
    ("truncated", "BackupCorrupt", "truncated"),
    ("truncated-with-forged-manifest", "BackupCorrupt", "truncated"),
    ("checksum", "BackupCorrupt", "checksum"),
    ("wrong-key", "WrongKey", None),
    ("wrong-key-id", "WrongKey", None),
    ("missing", "DownloadFailed", None),
])
def test_damaged_backup_leaves_the_target_untouched(
        store: S3ObjectStore, data_key: keys.DataKey, tmp_path: Path, damage: str,
        reason: str, problem: str | None) -> None:
    source = tmp_path / "source"
    make_tree(source, big=3 * MIB)
    record, _, _ = run_backup(store, workspace(), data_key, source, T0)
    target = tmp_path / "target"
    make_tree(target, big=1000, generation=7)
    before = snapshot(target)

    # as the agent gets it
    plan = bk.restore_plan(store, record, data_key, 600, datetime.now(UTC)).to_json()
    blob = store.get_object(record.object_key)
    if damage == "tampered":
        flipped = bytearray(blob)
        flipped[len(blob) // 2] ^= 0x04
        store.put_object(record.object_key, bytes(flipped), "application/octet-stream")
    elif damage == "truncated":
        store.put_object(record.object_key, blob[:-1000], "application/octet-stream")
    elif damage == "truncated-with-forged-manifest":
        cut = blob[:_records(blob)[-1]]  # whole chunks only: only the final flag tells
        store.put_object(record.object_key, cut, "application/octet-stream")
        plan.update(size=len(cut), sha256=hashlib.sha256(cut).hexdigest())
    elif damage == "checksum":
        plan["sha256"] = hashlib.sha256(b"another object").hexdigest()
    elif damage == "wrong-key":
        plan["key"] = base64.b64encode(os.urandom(32)).decode()
    elif damage == "wrong-key-id":
        with pytest.raises(bf.DataKeyMismatch):  # the operator notices first
            bk.restore_plan(store, record, keys.DataKey("dk-other", data_key.material), 600,
                            datetime.now(UTC))
        plan["keyId"] = "dk-other"
    elif damage == "missing":
        store.delete_objects([record.object_key])

    with pytest.raises(agent.BackupError) as info:
        agent.restore(plan, target)
    assert info.value.reason == reason
    if problem is not None:
        assert isinstance(info.value, agent.BackupCorrupt)
        assert info.value.problem == problem
    assert base64.b64encode(data_key.material).decode() not in str(info.value)
    assert snapshot(target) == before
    assert leftovers(target) == []


# --- a bucket writer without the keys -----------------------------------------------------

def _put(store: S3ObjectStore, key: str, body: bytes) -> None:
    store.put_object(key, body, "application/octet-stream")


def _manifest(store: S3ObjectStore, record: bk.BackupRecord) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(store.get_object(record.manifest_key))
    return doc


def test_bucket_writer_cannot_swap_or_forge_backups(
        store: S3ObjectStore, data_key: keys.DataKey, tmp_path: Path) -> None:
    """Someone with write access to the bucket (a leaked R2 token) but neither the class
    key nor the data key tries to make the workspace restore something else than its
    newest backup. The operator refuses every altered or forged manifest before building
    a plan; the agent refuses an object written as another backup (binding in the AAD)
    even when handed a plan whose size and sha256 match it; the target stays as it was."""
    ws = workspace()
    old_tree, new_tree = tmp_path / "old", tmp_path / "new"
    make_tree(old_tree, big=1 * MIB, generation=0)
    make_tree(new_tree, big=1 * MIB, generation=1)
    old, _, _ = run_backup(store, ws, data_key, old_tree, T0)
    new, _, _ = run_backup(store, ws, data_key, new_tree, T0 + timedelta(hours=1))
    old_blob = store.get_object(old.object_key)
    target = tmp_path / "target"
    make_tree(target, big=1000, generation=7)
    before = snapshot(target)

    # 1. Swap: the old object under the new backup's key, manifest size/sha fixed up.
    _put(store, new.object_key, old_blob)
    fixed = {**_manifest(store, new), "size": len(old_blob),
             "sha256": hashlib.sha256(old_blob).hexdigest()}
    _put(store, new.manifest_key, json.dumps(fixed).encode())
    swapped = bk.latest_backup(store, ws)
    assert swapped is not None and swapped.backup_id == new.backup_id
    with pytest.raises(bk.ManifestTampered) as refused:
        bk.restore_plan(store, swapped, data_key, 600, datetime.now(UTC))
    assert refused.value.reason == "BackupTampered"

    # ... and had a plan been built from that manifest, the agent refuses the object.
    # the genuine record of `new`
    plan = bk.restore_plan(store, new, data_key, 600, datetime.now(UTC)).to_json()
    plan.update(size=len(old_blob), sha256=hashlib.sha256(old_blob).hexdigest())
    with pytest.raises(agent.BackupCorrupt) as info:
        agent.restore(plan, target)
    assert info.value.problem == "swapped"
    assert snapshot(target) == before and leftovers(target) == []

    # ... also when the header is rewritten to name the new backup (digest recomputed):
    # the binding is in every chunk's AAD, so chunk 0 no longer authenticates.
    header = bf.parse_header(old_blob)
    assert header is not None
    body = header.raw[:-bf.DIGEST_SIZE].replace(old.backup_id.encode(), new.backup_id.encode())
    relabelled = body + hashlib.sha256(body).digest()[:bf.DIGEST_SIZE] + \
        old_blob[len(header.raw):]
    _put(store, new.object_key, relabelled)
    plan.update(size=len(relabelled), sha256=hashlib.sha256(relabelled).hexdigest())
    with pytest.raises(agent.BackupCorrupt) as info:
        agent.restore(plan, target)
    assert info.value.problem == "tampered"
    assert snapshot(target) == before and leftovers(target) == []

    # 2. Forgery: a complete manifest for a newer backup id, signed with a made-up key.
    forged_id = bk.backup_id(T0 + timedelta(hours=2))
    forger = keys.DataKey(data_key.key_id, keys.generate_data_key())
    doc = {**_manifest(store, old), "id": forged_id, "objectName": forged_id + bk.OBJECT_SUFFIX,
           "time": "2026-11-27T06:19:00Z"}
    _put(store, bk.object_key(ws, forged_id), old_blob)
    _put(store, bk.manifest_key(ws, forged_id),
         json.dumps(manifest_auth.sign(doc, forger)).encode())
    forged = bk.latest_backup(store, ws)
    assert forged is not None and forged.backup_id == forged_id
    with pytest.raises(bk.ManifestTampered):
        bk.restore_plan(store, forged, data_key, 600, datetime.now(UTC))
    # The same manifest with its mac removed (an "old-style" manifest) is no better.
    _put(store, bk.manifest_key(ws, forged_id),
         json.dumps({k: v for k, v in doc.items() if k != "mac"}).encode())
    with pytest.raises(bk.ManifestTampered):
        bk.restore_plan(store, bk.latest_backup(store, ws) or forged, data_key, 600,
                        datetime.now(UTC))

    # 3. Copying another workspace's backup (here: one sharing the data key, as a
    # retained workspace and its heir do) into this prefix under a newer id.
    neighbour = workspace("5e6f7a8b")
    theirs, _, _ = run_backup(store, neighbour, data_key, old_tree, T0 + timedelta(hours=3))
    their_doc = _manifest(store, theirs)
    _put(store, bk.object_key(ws, theirs.backup_id), store.get_object(theirs.object_key))
    _put(store, bk.manifest_key(ws, theirs.backup_id), json.dumps(their_doc).encode())
    copied = bk.latest_backup(store, ws)
    assert copied is not None and copied.backup_id == theirs.backup_id
    with pytest.raises(bk.ManifestTampered):
        bk.restore_plan(store, copied, data_key, 600, datetime.now(UTC))

    # 4. A giant "manifest" for a newer id is never read (it would exhaust memory).
    giant_id = bk.backup_id(T0 + timedelta(hours=4))
    _put(store, bk.object_key(ws, giant_id), old_blob)
    giant = {**_manifest(store, old), "id": giant_id, "objectName": giant_id + bk.OBJECT_SUFFIX}
    _put(store, bk.manifest_key(ws, giant_id),  # valid JSON, padded: only its size tells
         json.dumps(giant).encode() + b" " * bk.MAX_MANIFEST_SIZE)
    assert bk.latest_backup(store, ws) == copied

    # The untouched old backup still restores: nothing above damaged what is genuine.
    restore(store, old, data_key, target)
    assert snapshot(target) == snapshot(old_tree)
