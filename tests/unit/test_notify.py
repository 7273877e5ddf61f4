"""Webhook queues: bounded, never blocking the caller, masking secrets (no PostgreSQL)."""

from __future__ import annotations

import json
import socket
import time

from pgfailover.notify import Webhooks, encode, shown


def test_a_stuck_receiver_blocks_no_caller_and_its_queue_stays_bounded() -> None:
    with socket.socket() as stuck:  # accepts connections (backlog), never answers
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(16)
        port = stuck.getsockname()[1]
        hooks = Webhooks(
            [f"http://127.0.0.1:{port}/secret-token-path"],
            cluster="c",
            timeout=1.0,
            retries=0,
            queue_size=3,
        )
        started = time.monotonic()
        for i in range(10):
            hooks.send("recovery", node=f"node{i}")
        assert time.monotonic() - started < 0.05  # never waits on the network
        (stats,) = hooks.stats()
        assert stats["url"] == f"http://127.0.0.1:{port}"  # the path (a token) is never shown
        assert stats["dropped"] >= 6  # 10 sent, 3 queued, at most 1 being posted
        hooks.close(timeout=0.2)


def test_documents_mask_passwords_and_logs_never_show_a_url_path() -> None:
    body = encode("c", 7, "failover", {"reason": "failed: host=a password=Hunter22 port=5"})
    document = json.loads(body)
    assert (document["seq"], document["type"], document["cluster"]) == (7, "failover", "c")
    assert "Hunter22" not in body.decode()
    assert shown("https://hooks.example/services/T0KEN") == "https://hooks.example"
    assert shown("http://h:99999/x") == "(not a valid URL)"
