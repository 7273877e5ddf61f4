"""The arbiter lease's decisions, against a scripted etcd: take, keep, lose, may promote."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pgfailover.etcd import EtcdError, KeyValue
from pgfailover.lease import ArbiterLease, Holding
from pgfailover.maintenance import SharedPause


class ScriptedEtcd:
    """What ArbiterLease asks of etcd, answered from fields a test sets."""

    shown = "http://etcd:2379"

    def __init__(self) -> None:
        self.kv: KeyValue | None = None
        self.pause: KeyValue | None = None  # the cluster's maintenance key
        self.revision = 10
        self.ttl_left = 5
        self.failing: str | None = None
        self.leases: set[int] = set()
        self.revoked: list[int] = []
        self.steal_on_create = False

    def _check(self) -> None:
        if self.failing:
            raise EtcdError(self.failing)

    def get_many(self, keys: list[str]) -> tuple[int, list[KeyValue | None]]:
        self._check()
        return self.revision, [self.kv if k.endswith("/arbiter") else self.pause for k in keys]

    def put(self, key: str, value: str) -> int:
        self._check()
        self.revision += 1
        self.pause = KeyValue(key, value, self.revision, self.revision, 0)
        return self.revision

    def grant(self, ttl: int) -> int:
        self._check()
        lease = 100 + len(self.leases)
        self.leases.add(lease)
        return lease

    def create(self, key: str, value: str, lease: int) -> tuple[bool, KeyValue | None]:
        self._check()
        if self.steal_on_create:
            self.kv = KeyValue(key, "other:1", self.revision, self.revision, 999)
        if self.kv is not None:
            return False, self.kv
        self.revision += 1
        self.kv = KeyValue(key, value, self.revision, self.revision, lease)
        return True, self.kv

    def keepalive(self, lease: int) -> int:
        self._check()
        return self.ttl_left

    def revoke(self, lease: int) -> None:
        self._check()
        self.revoked.append(lease)
        if self.kv is not None and self.kv.lease == lease:
            self.kv = None

    def close(self) -> None:
        pass


def _lease(etcd: ScriptedEtcd, ttl: int = 6) -> ArbiterLease:
    return ArbiterLease(etcd, "app", identity="me:1", ttl=ttl)  # type: ignore[arg-type]


def test_a_free_key_is_taken_and_its_revision_fences() -> None:
    etcd = ScriptedEtcd()
    lease = _lease(etcd)
    assert lease.may_promote() is not None
    lease._try_take()
    assert lease.holding is not None
    assert lease.fencing_revision() is None  # nothing confirmed yet
    assert lease.may_promote() is None
    assert lease.fencing_revision() == 11  # what the last check confirmed
    assert lease.status()["held"] is True


def test_a_held_key_is_left_to_its_holder() -> None:
    etcd = ScriptedEtcd()
    etcd.kv = KeyValue("/pgfailover/app/arbiter", "other:7", 5, 5, 42)
    lease = _lease(etcd)
    lease._try_take()
    assert lease.holding is None
    assert etcd.leases == set()  # not even a lease granted
    why = lease.may_promote()
    assert why is not None
    assert "arbiter other:7 holds it" in why


def test_losing_the_race_to_create_leaks_no_lease() -> None:
    etcd = ScriptedEtcd()
    etcd.steal_on_create = True
    lease = _lease(etcd)
    lease._try_take()
    assert lease.holding is None
    assert etcd.revoked == [100]
    assert lease.status()["holder"] == "other:1"


def _holding(lease: ArbiterLease, **changes: Any) -> None:
    lease._try_take()
    held = lease.holding
    assert held is not None
    values = {"lease": held.lease, "revision": held.revision, "valid_until": held.valid_until}
    lease._holding = Holding(**{**values, **changes})


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("key deleted", "no longer this arbiter's"),
        ("key retaken", "no longer this arbiter's"),
        ("etcd unreachable", "cannot confirm the lease"),
        ("under the margin", "under the 2.0s margin"),
        ("clock ran out", "does not hold the lease"),
    ],
)
def test_may_promote_refuses_unless_etcd_confirms_and_time_is_left(case: str, why: str) -> None:
    etcd = ScriptedEtcd()
    lease = _lease(etcd)
    if case == "under the margin":
        _holding(lease, valid_until=time.monotonic() + 1.0)
    elif case == "clock ran out":
        _holding(lease, valid_until=time.monotonic() - 0.1)
    else:
        _holding(lease)
    if case == "key deleted":
        etcd.kv = None
    elif case == "key retaken":
        etcd.kv = KeyValue("/pgfailover/app/arbiter", "other:2", 99, 99, 7)
    elif case == "etcd unreachable":
        etcd.failing = "no endpoint answered"
    answer = lease.may_promote()
    assert answer is not None
    assert why in answer


def test_renewal_extends_and_an_expired_lease_is_lost() -> None:
    etcd = ScriptedEtcd()
    lease = _lease(etcd)
    _holding(lease, valid_until=time.monotonic() + 2.5)
    etcd.ttl_left = 6
    lease._renew()
    held = lease.holding
    assert held is not None
    assert held.valid_until > time.monotonic() + 5
    etcd.ttl_left = 0  # etcd says it expired
    lease._renew()
    assert lease.holding is None
    assert lease.may_promote() is not None


def test_closing_revokes_a_held_lease_for_an_immediate_handover() -> None:
    etcd = ScriptedEtcd()
    lease = _lease(etcd)
    lease._try_take()
    lease.close()
    assert etcd.revoked == [100]
    assert etcd.kv is None


def test_a_ttl_under_two_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 seconds"):
        _lease(ScriptedEtcd(), ttl=1)


def test_a_slow_etcd_read_that_eats_the_margin_refuses() -> None:
    """The time left is checked again after the read: a slow etcd does not slip through."""
    etcd = ScriptedEtcd()
    lease = _lease(etcd, ttl=3)  # margin 1 s
    _holding(lease, valid_until=time.monotonic() + 1.3)
    slow_get = etcd.get_many

    def get_many(keys: list[str]) -> tuple[int, list[KeyValue | None]]:
        time.sleep(0.4)  # the read itself (a slow or distant etcd)
        return slow_get(keys)

    etcd.get_many = get_many  # type: ignore[method-assign]
    why = lease.may_promote()
    assert why is not None
    assert "under the 1.0s margin" in why
    assert lease.fencing_revision() is None


def test_an_automatic_promotion_is_refused_while_the_cluster_is_paused_in_etcd() -> None:
    etcd = ScriptedEtcd()
    lease = _lease(etcd)
    seen: list[tuple[SharedPause | None, int]] = []
    lease.watch_pause(lambda pause, revision: seen.append((pause, revision)))
    _holding(lease)
    assert lease.status()["maintenance"] == {"paused": False}
    revision = lease.share_pause(SharedPause(1_700_000_000.0, "kernel upgrade", "b:2"))
    assert revision == etcd.revision
    why = lease.may_promote(automatic=True)
    assert why is not None
    assert "maintenance mode is on for the cluster (paused by b:2" in why
    assert lease.may_promote() is None  # an operator's trigger or switchover goes on
    assert seen[-1] == (SharedPause(1_700_000_000.0, "kernel upgrade", "b:2"), etcd.revision)
    assert lease.status()["maintenance"]["by"] == "b:2"
    lease.share_resume(SharedPause(1_700_000_100.0, "resumed", "c:3", paused=False))
    assert lease.may_promote(automatic=True) is None
    assert lease.status()["maintenance"]["paused"] is False
    assert etcd.pause is not None  # written as resumed, not deleted


def test_the_holder_looks_every_poll_and_renews_when_due() -> None:
    etcd = ScriptedEtcd()
    lease = _lease(etcd, ttl=6)
    reads = renewals = 0
    get_many, keepalive = etcd.get_many, etcd.keepalive

    def counting_get(keys: list[str]) -> tuple[int, list[KeyValue | None]]:
        nonlocal reads
        reads += 1
        return get_many(keys)

    def counting_keepalive(lease: int) -> int:
        nonlocal renewals
        renewals += 1
        return keepalive(lease)

    etcd.get_many = counting_get  # type: ignore[method-assign]
    etcd.keepalive = counting_keepalive  # type: ignore[method-assign]
    assert lease._step() == lease.poll  # took the key
    for _ in range(3):
        assert lease._step() == lease.poll
    assert (reads, renewals) == (4, 0)  # a pause set elsewhere is seen within a poll
    lease._renew_at = time.monotonic()  # a third of the TTL has passed
    lease._step()
    assert (reads, renewals) == (5, 1)
