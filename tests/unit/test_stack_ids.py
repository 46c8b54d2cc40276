"""Kafka cluster ids the stack generates (no servers: the format itself runs in tests/integration)."""

from __future__ import annotations

import base64

from clipaudit.stack import kafka


def test_new_cluster_id_never_starts_with_a_dash(monkeypatch):
    draws = iter([b"\xf8" + bytes(15), bytes(range(16))])   # 0xf8...: base64url "-" first; then a usable one
    monkeypatch.setattr(kafka.secrets, "token_bytes", lambda n: next(draws))
    cid = kafka.new_cluster_id()
    assert cid == base64.urlsafe_b64encode(bytes(range(16))).decode().rstrip("=")
    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).decode().startswith("-")
    assert len(cid) == 22 and not cid.startswith("-")
