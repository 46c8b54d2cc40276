"""One contract, two stores: local filesystem (here) and S3 on the real MinIO
(tests/integration/test_store_s3.py runs the same class)."""

from __future__ import annotations

import pytest

from clipaudit.errors import InvalidInput, NotFound
from clipaudit.store import LocalStore, open_store


class StoreContract:
    @pytest.fixture
    def store(self):  # overridden
        raise NotImplementedError

    def test_put_get_bytes(self, store):
        store.put_bytes("a/b.bin", b"hello")
        assert store.get_bytes("a/b.bin") == b"hello"
        assert store.exists("a/b.bin")
        assert store.size("a/b.bin") == 5

    def test_overwrite_is_whole(self, store):
        store.put_bytes("x", b"1" * 1000)
        store.put_bytes("x", b"2")
        assert store.get_bytes("x") == b"2"

    def test_missing_is_not_found(self, store):
        assert not store.exists("nope")
        with pytest.raises(NotFound):
            store.get_bytes("nope")
        with pytest.raises(NotFound):
            store.size("nope")

    def test_list_sorted_under_prefix(self, store):
        for k in ["p/2", "p/1", "q/1", "p/sub/3"]:
            store.put_bytes(k, b"x")
        assert list(store.list("p/")) == ["p/1", "p/2", "p/sub/3"]
        assert set(store.list()) >= {"p/1", "p/2", "p/sub/3", "q/1"}

    def test_files(self, store, tmp_path):
        src = tmp_path / "src.bin"
        src.write_bytes(b"\x00\x01" * 5000)
        store.put_file("f/src.bin", src)
        dst = store.get_file("f/src.bin", tmp_path / "out" / "dst.bin")
        assert dst.read_bytes() == src.read_bytes()

    def test_delete(self, store):
        store.put_bytes("d", b"x")
        store.delete("d")
        assert not store.exists("d")

    def test_child_and_uri(self, store):
        c = store.child("kid")
        c.put_bytes("k", b"v")
        assert store.get_bytes("kid/k") == b"v"
        assert c.uri("k").endswith("kid/k")
        assert open_store(c.uri()).get_bytes("k") == b"v" if not c.uri().startswith("s3://") else True


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalStore(tmp_path / "store")

    def test_escape_refused(self, store):
        with pytest.raises(InvalidInput):
            store.put_bytes("../outside", b"x")

    def test_unwritable_location(self, tmp_path):
        f = tmp_path / "file"
        f.write_text("x")
        with pytest.raises(InvalidInput):
            LocalStore(f / "sub")
