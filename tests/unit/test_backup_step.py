"""The backup step against in-memory ports: data key, backup before stop (begin, poll,
commit), failures, rollback refusal, and what a delete does with the backups."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest

from agentspaces.api.enums import ConditionType, Phase, Reason
from agentspaces.api.model import IN_USE_FINALIZER
from agentspaces.clouds.errors import ErrorKind
from agentspaces.clouds.r2 import (
    CompletedPart,
    MultipartUpload,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
)
from agentspaces.persistence import backups
from agentspaces.pki import AgentCredentials
from agentspaces.reconcile import backup_step
from agentspaces.reconcile.credentials import ResolvedCredentials
from agentspaces.reconcile.outcome import Wait
from agentspaces.reconcile.scope import Scope
from agentspaces.reconcile.secret_ownership import release_kept
from agentspaces.runtime import Runtime, StoreAdapter
from agentspaces_vm.contracts import (
    BackupJob,
    BackupPlan,
    BackupResult,
    JobState,
    UploadedPart,
    format_time,
)
from tests.support.fakes import FakeAgent
from tests.support.scope_builder import HETZNER_TOKEN, SETTINGS, ScopeBuilder

T = ConditionType
CLASS_KEY = bytes(range(32))
KEY_SECRET = ("team-a", "demo-backup-key")


class MemoryStore:
    """`ObjectStore` over dicts; `upload_part` stands in for the agent's presigned PUT."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, tuple[str, dict[int, bytes]]] = {}
        self.failure: ObjectStoreError | None = None
        self._ids = itertools.count(1)

    def _call(self) -> None:
        if self.failure is not None:
            raise self.failure

    def create_multipart_upload(self, key: str,
                                content_type: str = "application/octet-stream") -> str:
        self._call()
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = (key, {})
        return upload_id

    def presign_upload_part(self, key: str, upload_id: str, part_number: int,
                            expires: int) -> str:
        return f"https://store.test/{key}?uploadId={upload_id}&partNumber={part_number}"

    def upload_part(self, upload_id: str, number: int, data: bytes) -> str:
        self.uploads[upload_id][1][number] = data
        return hashlib.md5(data).hexdigest()  # S3 ETags are MD5 digests

    def complete_multipart_upload(self, key: str, upload_id: str,
                                  parts: Sequence[CompletedPart]) -> str:
        self._call()
        if upload_id not in self.uploads:
            raise ObjectNotFound(f"upload {upload_id} is gone", "NoSuchUpload")
        _, uploaded = self.uploads.pop(upload_id)
        self.objects[key] = b"".join(uploaded[p.part_number] for p in parts)
        return "etag"

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        self._call()
        self.uploads.pop(upload_id, None)

    def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        self._call()
        return [MultipartUpload(key, upload_id) for upload_id, (key, _) in self.uploads.items()
                if key.startswith(prefix)]

    def presign_get(self, key: str, expires: int) -> str:
        return f"https://store.test/{key}?get"

    def put_object(self, key: str, body: bytes,
                   content_type: str = "application/json") -> None:
        self._call()
        self.objects[key] = body

    def get_object(self, key: str) -> bytes:
        self._call()
        if key not in self.objects:
            raise ObjectNotFound(key, "NoSuchKey")
        return self.objects[key]

    def head_object(self, key: str) -> ObjectInfo | None:
        self._call()
        body = self.objects.get(key)
        return None if body is None else ObjectInfo(key, len(body))

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        self._call()
        return [ObjectInfo(k, len(v)) for k, v in sorted(self.objects.items())
                if k.startswith(prefix)]

    def delete_objects(self, keys: Iterable[str]) -> None:
        self._call()
        for key in keys:
            self.objects.pop(key, None)

    def close(self) -> None:
        pass


@dataclass
class BackupAgent(FakeAgent):
    """A FakeAgent that takes backup plans; the test finishes the job it started."""

    plans: list[BackupPlan] = field(default_factory=list)
    job: BackupJob = field(default_factory=BackupJob)

    async def start_backup(self, plan: BackupPlan) -> str:
        self._enter("start_backup", plan.backup_id)
        self.plans.append(plan)
        self.job = BackupJob(JobState.RUNNING, plan.backup_id)
        return plan.backup_id

    async def backup_status(self) -> BackupJob:
        self._enter("backup_status")
        return self.job


class World:
    def __init__(self, on_delete: str = "Delete") -> None:
        self.builder = ScopeBuilder().with_class(
            storage={"endpoint": "https://store.test", "bucket": "backups",
                     "credentialsSecretRef": {"name": "r2"}},
            encryption={"keySecretRef": {"name": "class-key"}})
        self.builder.with_spec(persistence={"onDelete": on_delete})
        self.store = MemoryStore()
        self.agent = BackupAgent()
        self.builder.agent = self.agent
        self.builder.runtime = Runtime(
            SETTINGS, self.builder.kube, clock=self.builder.clock,
            store_factory=lambda *_: self.store,
            agent_factory=lambda *_: self.agent)
        self.builder.with_status({"phase": "Running", "startedAt": format_time(self.now()),
                                  "server": {"id": 1},
                                  "agentEndpoint": {"url": "https://192.0.2.1:9443"},
                                  "conditions": [{"type": "AgentReady", "status": "True",
                                                  "reason": "AgentReady"}]})

    def now(self) -> Any:
        return self.builder.clock()

    def scope(self) -> Scope:
        plain = self.builder.scope()
        creds = ResolvedCredentials(
            klass=plain.klass, spec=plain.spec, hetzner_token=HETZNER_TOKEN, dns_token="d",
            storage_access_key="a", storage_secret_key="s", class_key=CLASS_KEY,
            class_key_previous=None, anthropic_api_key=None, repository_token=None)
        scope = Scope.resolved(self.builder.visit(), creds)
        scope.agent_credentials = AgentCredentials("cert", "key", "token", "sha", "fp")
        return scope

    async def step(self, run: Any) -> tuple[Any, Scope]:
        """One visit: run `run(scope)`, store the status patch as the handler does."""
        scope = self.scope()
        outcome = await run(scope)
        self.builder.save(scope)
        return outcome, scope

    def finish_backup(self, data: bytes = b"ciphertext" * 100) -> None:
        """The agent uploads its archive (one part) and reports the result."""
        plan = self.agent.plans[-1]
        pending = backups.PendingBackup.from_dict(self.builder.status["pendingBackup"])
        etag = self.store.upload_part(pending.upload_id, 1, data)
        result = BackupResult(backup_id=plan.backup_id, parts=(UploadedPart(1, etag),),
                              size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                              key_id=plan.key_id, chunk_size=plan.chunk_size,
                              format_version=2)
        self.agent.job = BackupJob(JobState.SUCCEEDED, plan.backup_id, result=result.to_json())


def condition(scope: Scope, type_: ConditionType) -> tuple[bool, str | None]:
    return scope.status.is_true(type_), scope.status.reason(type_)


async def test_the_data_key_is_made_once_and_opened_after() -> None:
    world = World()
    world.builder.with_status(None)
    outcome, scope = await world.step(backup_step.prepare)
    assert outcome is None and scope.data_key is not None
    assert condition(scope, T.BACKUP_RESTORED) == (False, Reason.NO_BACKUP)
    secret = world.builder.kube.secrets[KEY_SECRET]
    assert secret.owner_uids == (world.builder.uid,)
    _, again = await world.step(backup_step.prepare)
    assert again.data_key == scope.data_key
    created = [c for c in world.builder.kube.calls.only(["create_secret"])
               if c.args == KEY_SECRET]
    assert len(created) == 1
    # Kept until its Workspace's cleanup ends: a namespace being deleted must not take it
    # before the last backup is encrypted with it.
    assert secret.finalizers == (IN_USE_FINALIZER,)


async def test_the_kept_secrets_are_let_go_when_the_cleanup_ends() -> None:
    world = World(on_delete="Retain")
    world.builder.with_status(None)
    await world.step(backup_step.prepare)
    kube = world.builder.kube
    kube.add_secret("team-a", "demo-agent", {"token": "t"}, owner=world.scope().owner)
    kube.secrets[("team-a", "demo-agent")] = replace(kube.secrets[("team-a", "demo-agent")],
                                                    finalizers=(IN_USE_FINALIZER, "x/y"))
    await release_kept(world.builder.visit())
    assert kube.secrets[KEY_SECRET].finalizers == ()
    assert kube.secrets[("team-a", "demo-agent")].finalizers == ("x/y",)  # not ours: kept
    await release_kept(world.builder.visit())  # nothing left to take: no write
    assert len(kube.calls.only(["set_secret_finalizers"])) == 2


async def test_a_stop_backs_up_then_lets_the_server_go() -> None:
    world = World()
    outcome, scope = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.requeue == Wait.BACKUP_POLL
    plan = world.agent.plans[0]
    assert scope.data_key is not None and plan.key_id == scope.data_key.key_id
    assert plan.part_urls[0].startswith("https://store.test/agentspaces/team-a/demo-")
    assert plan.part_size == SETTINGS.backup_part_mib * 1024 * 1024
    assert world.builder.status["pendingBackup"]["backup_id"] == plan.backup_id
    assert world.builder.status["stoppingSince"] == format_time(world.now())

    world.builder.clock.advance(3)
    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.message == "backup running"

    world.finish_backup()
    outcome, scope = await world.step(backup_step.before_stop)
    assert outcome is None  # committed: the server may go
    backup = world.builder.status["backup"]
    assert backup["object"].endswith(f"{plan.backup_id}.tar.zst.enc")
    assert backup["size"] == 1000 and len(backup["sha256"]) == 64
    assert "pendingBackup" not in world.builder.status
    assert condition(scope, T.BACKUP_SUCCEEDED) == (True, Reason.BACKUP_DONE)
    assert any(key.endswith(".manifest.json") for key in world.store.objects)

    calls = len(world.agent.calls)
    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is None and len(world.agent.calls) == calls  # fresh: not again


async def test_a_stop_in_the_second_of_the_last_backup_waits_then_backs_up_again(
        ) -> None:
    """Stop, start and stop again inside one second: the earlier stop's backup must
    not pass for this stop's (status times have second resolution)."""
    world = World()
    world.builder.clock.now = world.now().replace(microsecond=100_000)
    await world.step(backup_step.before_stop)
    world.finish_backup()
    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is None
    first = world.builder.status["backup"]["object"]
    world.builder.with_status({k: v for k, v in world.builder.status.items()
                               if k != "stoppingSince"})  # stopped, started, ready
    world.builder.clock.advance(0.5)

    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.requeue == Wait.NEXT_SECOND
    assert len(world.agent.plans) == 1 and "stoppingSince" not in world.builder.status

    world.builder.clock.advance(0.5)
    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.message == "backup running"
    assert len(world.agent.plans) == 2
    world.finish_backup()
    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is None and world.builder.status["backup"]["object"] != first


async def test_a_backup_whose_id_is_taken_waits_for_the_next_second() -> None:
    world = World()
    where = backup_step.location(world.scope())
    world.store.objects[backups.manifest_key(where, backups.backup_id(world.now()))] = b"{}"
    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.requeue == Wait.NEXT_SECOND
    assert world.agent.plans == [] and world.store.uploads == {}


async def test_a_failed_backup_keeps_the_server_and_frees_the_upload() -> None:
    world = World()
    await world.step(backup_step.before_stop)
    world.agent.job = BackupJob(JobState.FAILED, world.agent.plans[0].backup_id,
                                error="tar exited 2: disk full", reason="ArchiveFailed")
    outcome, scope = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.requeue == Wait.BACKUP_FAILED
    assert condition(scope, T.BACKUP_SUCCEEDED) == (False, Reason.BACKUP_FAILED)
    assert "disk full" in scope.status.message(T.BACKUP_SUCCEEDED)
    assert world.store.uploads == {} and "pendingBackup" not in world.builder.status
    assert Reason.BACKUP_FAILED in world.builder.reasons()


async def test_a_result_that_breaks_the_contract_fails_the_commit() -> None:
    world = World()
    await world.step(backup_step.before_stop)
    world.agent.job = BackupJob(JobState.SUCCEEDED, world.agent.plans[0].backup_id,
                                result={"size": "lots"})
    outcome, scope = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.requeue == Wait.BACKUP_FAILED
    assert condition(scope, T.BACKUP_SUCCEEDED) == (False, Reason.BACKUP_FAILED)
    assert "malformed agent result" in scope.status.message(T.BACKUP_SUCCEEDED)
    assert world.store.uploads == {} and "backup" not in world.builder.status


@pytest.mark.parametrize(("kind", "reason", "wait"), [
    (ErrorKind.RATE_LIMITED, Reason.RATE_LIMITED, Wait.RATE_LIMITED),
    (ErrorKind.PERMANENT, Reason.CLOUD_API_ERROR, Wait.PERMANENT),
])
async def test_store_errors_go_through_the_one_cloud_failure_helper(
        kind: ErrorKind, reason: Reason, wait: float) -> None:
    world = World()
    await world.step(backup_step.prepare)  # the key exists before the store fails
    world.store.failure = ObjectStoreError("CreateMultipartUpload: refused", "Code", kind)
    outcome, scope = await world.step(backup_step.before_stop)
    assert outcome is not None and outcome.requeue == wait
    assert condition(scope, T.BACKUP_SUCCEEDED) == (False, reason)
    assert world.agent.plans == []


async def _committed_backup(world: World) -> dict[str, Any]:
    await world.step(backup_step.before_stop)
    world.finish_backup()
    await world.step(backup_step.before_stop)
    return dict(world.builder.status["backup"])


async def test_a_bucket_rolled_back_behind_the_cluster_refuses_the_start() -> None:
    world = World()
    committed = await _committed_backup(world)
    later = world.now() + timedelta(hours=1)
    # The cluster remembers a newer backup than the bucket holds (its manifest deleted).
    world.builder.with_status({"backup": {**committed, "time": format_time(later)}})
    outcome, scope = await world.step(backup_step.prepare)
    assert outcome is not None and outcome.requeue == Wait.BACKUP_FAILED
    assert condition(scope, T.BACKUP_RESTORED) == (False, Reason.BACKUP_ROLLED_BACK)
    assert condition(scope, T.READY) == (False, Reason.BACKUP_ROLLED_BACK)
    assert scope.status.phase is Phase.FAILED

    world.builder.body["metadata"]["annotations"] = {
        backup_step.ACCEPT_ROLLBACK_ANNOTATION: backups.backup_id(later)}
    outcome, scope = await world.step(backup_step.prepare)
    assert outcome is None
    assert world.builder.status["backup"] == committed  # reset to what is restored
    assert world.builder.status["restore"]["object"] == committed["object"]


async def test_delete_with_retain_keeps_the_key_and_names_the_last_backup() -> None:
    world = World(on_delete="Retain")
    committed = await _committed_backup(world)
    outcome, _ = await world.step(backup_step.delete)
    assert outcome is None
    secret = world.builder.kube.secrets[KEY_SECRET]
    assert secret.owner_uids == ()
    assert secret.labels["agentspaces.dev/retained"] == "true"
    bid = committed["object"].rsplit("/", 1)[1].split(".")[0]
    assert secret.annotations[backup_step.LAST_BACKUP_ANNOTATION] == bid
    assert secret.annotations[backup_step.BACKUP_PREFIX_ANNOTATION].endswith(
        f"demo-{world.builder.uid}/")
    assert world.store.objects  # the backups stay


async def test_delete_with_delete_shreds_backups_and_key() -> None:
    world = World(on_delete="Delete")
    await _committed_backup(world)
    world.store.failure = ObjectStoreError("ListObjectsV2: slow down", "SlowDown",
                                           ErrorKind.RATE_LIMITED)
    outcome, _ = await world.step(backup_step.delete)
    assert outcome is not None and outcome.requeue == Wait.RATE_LIMITED
    assert KEY_SECRET in world.builder.kube.secrets  # the key goes last
    world.store.failure = None
    outcome, _ = await world.step(backup_step.delete)
    assert outcome is None
    assert world.store.objects == {} and KEY_SECRET not in world.builder.kube.secrets


_store: StoreAdapter = MemoryStore()  # mypy: the fake is what it stands in for
