"""The store contract against the real MinIO of the local stack."""

from __future__ import annotations

import pytest

from clipaudit.errors import NotFound, Unavailable
from clipaudit.store import open_store
from tests.unit.test_store_contract import StoreContract

pytestmark = pytest.mark.integration


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_store):
        return s3_store


def test_missing_bucket_is_one_clear_error(stack):
    store = open_store("s3://no-such-bucket-clipaudit/x", settings=stack)
    with pytest.raises(NotFound, match="bucket"):
        store.put_bytes("k", b"v")


def test_unreachable_endpoint(stack):
    settings = stack.model_copy(update={"s3_endpoint": "127.0.0.1:1"})
    store = open_store("s3://clipaudit/x", settings=settings)
    with pytest.raises(Unavailable):
        store.get_bytes("k")
