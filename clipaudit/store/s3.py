"""S3 store over the minio SDK (MinIO locally, any S3 in production)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

from clipaudit.errors import InvalidInput, NotFound, ResourceExhausted, Unavailable


def _translate(e: Exception, what: str) -> Exception:
    from minio.error import S3Error

    if isinstance(e, S3Error):
        if e.code in ("NoSuchKey", "NoSuchObject"):
            return NotFound(f"{what} does not exist")
        if e.code == "NoSuchBucket":
            return NotFound(f"bucket of {what} does not exist (create it or run `clipaudit stack up`)")
        if e.code in ("XMinioStorageFull", "QuotaExceeded", "EntityTooLarge"):
            return ResourceExhausted(f"bucket full while writing {what}: {e.code}")
        if e.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return InvalidInput(f"access to {what} denied: {e.code}")
        return Unavailable(f"S3 error on {what}: {e.code} {e.message}")
    if isinstance(e, OSError) or e.__class__.__name__ in ("MaxRetryError", "NewConnectionError"):
        return Unavailable(f"S3 endpoint unreachable while accessing {what}: {e}")
    return e


class S3Store:
    """Objects under ``s3://bucket/prefix``. A single PUT is atomic in S3."""

    def __init__(self, client, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, bucket: str, prefix: str = "", settings=None) -> "S3Store":
        from minio import Minio
        import urllib3

        from clipaudit.config import StackSettings

        s = settings or StackSettings()
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=60),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )
        client = Minio(
            s.s3_endpoint,
            access_key=s.s3_access_key,
            secret_key=s.s3_secret_key.get_secret_value(),
            secure=s.s3_secure,
            http_client=http,
        )
        return cls(client, bucket, prefix)

    def _k(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except Exception as e:  # noqa: BLE001 - translated
            raise _translate(e, f"s3://{self.bucket}") from e

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(self.bucket, self._k(key), io.BytesIO(data), len(data))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(key)) from e

    def put_file(self, key: str, path: str | Path) -> None:
        try:
            self.client.fput_object(self.bucket, self._k(key), str(path))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(key)) from e

    def get_bytes(self, key: str) -> bytes:
        resp = None
        try:
            resp = self.client.get_object(self.bucket, self._k(key))
            return resp.read()
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(key)) from e
        finally:
            if resp is not None:
                resp.close()
                resp.release_conn()

    def get_file(self, key: str, path: str | Path) -> Path:
        try:
            self.client.fget_object(self.bucket, self._k(key), str(path))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(key)) from e
        return Path(path)

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._k(key))
            return True
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise _translate(e, self.uri(key)) from e
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(key)) from e

    def size(self, key: str) -> int:
        try:
            return self.client.stat_object(self.bucket, self._k(key)).size
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(key)) from e

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self._k(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            names = [o.object_name for o in self.client.list_objects(self.bucket, prefix=full, recursive=True)]
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(prefix)) from e
        yield from sorted(n[strip:] for n in names)

    def delete(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, self._k(key))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, self.uri(key)) from e

    def uri(self, key: str = "") -> str:
        k = self._k(key) if key else self.prefix
        return f"s3://{self.bucket}/{k}".rstrip("/")

    def child(self, prefix: str) -> "S3Store":
        return S3Store(self.client, self.bucket, self._k(prefix))

    def __repr__(self) -> str:
        return f"S3Store({self.uri()!r})"
