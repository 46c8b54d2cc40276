"""WebDataset tar shards: write them byte-for-byte deterministically, read them safely.

A shard is a plain tar whose members are grouped into *samples* by key, the
WebDataset convention: ``dir/abc.jpg`` and ``dir/abc.json`` form the sample
``{"__key__": "dir/abc", "jpg": ..., "json": ...}`` (key = the path up to the
first ``.`` of the basename, extension = the rest).

* :class:`ShardWriter` writes one tar, building the ustar headers itself (several
  times faster than ``tarfile`` for small members). Every header field that
  could vary between runs is fixed (mtime 0, uid/gid 0, empty user/group names,
  mode 0644) and the members of a sample are written in sorted extension order,
  so the same samples give byte-identical tars (and identical sha256s).
* :func:`iter_samples` reads one tar (path, bytes or binary file object) with a
  small header parser of its own, so a truncated or corrupt tar is always
  *detected* (``tarfile`` silently stops at a header cut short) and can never
  hang: every read either returns the bytes it asked for or ends the shard.
  Errors go to a ``handler=`` policy function, the webdataset style:
  :func:`reraise` (default) or :func:`warn_and_continue`.
* :func:`write_shards` splits a stream of samples into ``prefix-000000.tar``,
  ``prefix-000001.tar``... in a :class:`~clipaudit.store.Store` and returns one
  :class:`ShardInfo` (key, count, sha256, bytes) per shard.

Tested in ``tests/unit/test_shards.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from pydantic import BaseModel, ConfigDict

from clipaudit.errors import InvalidInput

log = logging.getLogger(__name__)

BLOCK = 512
Handler = Callable[[BaseException], bool]

# Extensions decoded on read; everything else stays bytes.
TEXT_EXTENSIONS = frozenset({"txt", "text", "caption"})
JSON_EXTENSIONS = frozenset({"json"})
INT_EXTENSIONS = frozenset({"cls", "cls2", "index"})

_KEY_RE = re.compile(r"^[^.\s][^.\n\r]*$")
_EXT_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


class ShardError(InvalidInput):
    """A shard that cannot be read: truncated, corrupt, or a sample that does not
    decode. ``key`` is the sample being read when it happened (None if unknown)."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.key = key
        self.source = source


# --------------------------------------------------------------------------- handlers


def reraise(exc: BaseException) -> bool:
    """Error policy: stop at the first problem by raising it."""
    raise exc


def warn_and_continue(exc: BaseException) -> bool:
    """Error policy: log a warning naming the sample, skip it, go on where possible.

    After a structural error (truncated or corrupt tar) nothing more can be read
    from that shard: the reader yields what it had and stops cleanly."""
    key = getattr(exc, "key", None)
    source = getattr(exc, "source", None)
    where = " ".join(p for p in (f"shard {source}" if source else "", f"key {key!r}" if key else "") if p)
    log.warning("skipping %s: %s", where or "sample", exc)
    return True


def ignore_and_continue(exc: BaseException) -> bool:
    """Error policy: skip silently."""
    return True


# --------------------------------------------------------------------------- encoding


def encode_value(ext: str, value: Any) -> bytes:
    """bytes as they are; str as UTF-8; dict/list (or a ``json`` member) as JSON with
    sorted keys; int as its decimal text (``cls``)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        raise InvalidInput(f"cannot store a bool as .{ext}; wrap it in a dict (json)")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"the .{ext} value is not JSON-serialisable: {e}") from e
    raise InvalidInput(f"cannot store a {type(value).__name__} as .{ext}: give bytes, str, int or dict")


def decode_value(ext: str, data: bytes) -> Any:
    last = ext.rsplit(".", 1)[-1].lower()
    if last in TEXT_EXTENSIONS:
        return data.decode("utf-8")
    if last in JSON_EXTENSIONS:
        return json.loads(data.decode("utf-8"))
    if last in INT_EXTENSIONS:
        return int(data.decode("ascii").strip())
    return data


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"a/b/x.seg.png"`` -> ``("a/b/x", "seg.png")``; None if the basename has no
    extension (such members are not part of any sample)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{head}/{stem}" if head else stem), ext


# --------------------------------------------------------------------------- writing


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8")
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode("ascii") + body


def _ustar_template() -> bytearray:
    h = bytearray(BLOCK)
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[136:148] = b"00000000000\0"
    h[148:156] = b"        "  # the checksum counts its own field as spaces
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = b"0000000\0"
    h[337:345] = b"0000000\0"
    return h


_TEMPLATE = bytes(_ustar_template())
_TEMPLATE_SUM = sum(_TEMPLATE)


def _ustar_header(name: bytes, size: int, typeflag: bytes) -> bytes:
    """One 512-byte ustar header with every variable field fixed (mtime 0, uid/gid
    0, empty user/group names, mode 0644); only name, size and type vary."""
    h = bytearray(_TEMPLATE)
    h[0:len(name)] = name
    size_field = b"%011o\0" % size
    h[124:136] = size_field
    h[156:157] = typeflag
    h[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(name) + sum(size_field) + typeflag[0])
    return bytes(h)


_MAX_USTAR_SIZE = 8 ** 11 - 1


def tar_member(name: str, data: bytes) -> bytes:
    """The bytes of one regular-file member (header, data, padding); a PAX header
    first when the name is not short ASCII or the file is over 8 GiB."""
    raw = name.encode("utf-8")
    out = []
    pax = b""
    if len(raw) > 100 or not name.isascii():
        pax += _pax_record("path", name)
        raw = raw[:100].decode("utf-8", "ignore").encode("ascii", "replace")[:100]
    if len(data) > _MAX_USTAR_SIZE:
        pax += _pax_record("size", str(len(data)))
    if pax:
        out.append(_ustar_header(b"././@PaxHeader", len(pax), b"x"))
        out.append(pax + b"\0" * (-len(pax) % BLOCK))
    out.append(_ustar_header(raw, min(len(data), _MAX_USTAR_SIZE), b"0"))
    out.append(data)
    out.append(b"\0" * (-len(data) % BLOCK))
    return b"".join(out)


END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


class ShardWriter:
    """Write samples into one tar, deterministically.

    >>> with ShardWriter("x.tar") as w:
    ...     w.write("000001", {"jpg": jpeg_bytes, "txt": "a photo of a star", "json": {...}})

    ``target`` is a path or a binary file object (left open when given as one).
    Headers are plain ustar (PAX records only for long or non-ASCII names), the
    archive ends with two zero blocks; any tar reader reads it.
    """

    def __init__(self, target: str | Path | BinaryIO):
        if isinstance(target, (str, Path)):
            try:
                self._file: BinaryIO = open(target, "wb")
            except OSError as e:
                raise InvalidInput(f"cannot write shard {target}: {e.strerror}") from e
            self._owns = True
        else:
            self._file = target
            self._owns = False
        self._closed = False
        self.count = 0
        self.bytes = 0
        self._keys: set[str] = set()

    def write(self, key: str, sample: Mapping[str, Any]) -> int:
        """Add one sample; returns the number of bytes its members take in the tar."""
        if self._closed:
            raise InvalidInput("this ShardWriter is closed")
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise InvalidInput(f"invalid sample key {key!r}: a non-empty string without '.'")
        if key in self._keys:
            raise InvalidInput(f"duplicate sample key {key!r} in one shard")
        members = {ext: v for ext, v in sample.items() if not ext.startswith("__")}
        if not members:
            raise InvalidInput(f"sample {key!r} has no members")
        parts = []
        for ext in sorted(members):
            if not _EXT_RE.match(ext):
                raise InvalidInput(f"invalid extension {ext!r} in sample {key!r}")
            parts.append(tar_member(f"{key}.{ext}", encode_value(ext, members[ext])))
        blob = b"".join(parts)
        self._file.write(blob)
        self._keys.add(key)
        self.count += 1
        self.bytes += len(blob)
        return len(blob)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.write(END_OF_ARCHIVE)
            self.bytes += len(END_OF_ARCHIVE)
            if self._owns:
                self._file.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_shard_bytes(samples: Iterable[tuple[str, Mapping[str, Any]]]) -> bytes:
    """All samples in one tar, returned as bytes."""
    buf = io.BytesIO()
    with ShardWriter(buf) as w:
        for key, sample in samples:
            w.write(key, sample)
    return buf.getvalue()


class ShardInfo(BaseModel):
    """One written shard: its key in the store, sample count, sha256 and size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    count: int
    sha256: str
    bytes: int


def shard_key(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def write_shards(
    samples: Iterable[tuple[str, Mapping[str, Any]]],
    store,
    prefix: str,
    maxcount: int,
    *,
    maxsize: int | None = None,
) -> list[ShardInfo]:
    """Write ``(key, sample)`` pairs into ``prefix-000000.tar``, ``prefix-000001.tar``...

    A shard holds at most ``maxcount`` samples (and, if given, is closed once it
    reaches ``maxsize`` bytes). Each shard is built in memory and stored with one
    atomic put, so a reader never sees half a shard. No samples -> no shards.
    """
    if maxcount < 1:
        raise InvalidInput(f"maxcount must be >= 1, got {maxcount}")
    if not prefix or prefix.endswith("/"):
        raise InvalidInput(f"shard prefix must name a file stem, got {prefix!r}")
    infos: list[ShardInfo] = []
    buf: io.BytesIO | None = None
    writer: ShardWriter | None = None

    def flush() -> None:
        nonlocal buf, writer
        assert writer is not None and buf is not None
        writer.close()
        data = buf.getvalue()
        key = shard_key(prefix, len(infos))
        store.put_bytes(key, data)
        infos.append(ShardInfo(key=key, count=writer.count, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)))
        buf = writer = None

    for key, sample in samples:
        if writer is None:
            buf = io.BytesIO()
            writer = ShardWriter(buf)
        writer.write(key, sample)
        if writer.count >= maxcount or (maxsize is not None and writer.bytes >= maxsize):
            flush()
    if writer is not None and writer.count:
        flush()
    return infos


# --------------------------------------------------------------------------- reading


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX extended header records: ``"<len> <key>=<value>\\n"``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            raise ValueError("malformed PAX header")
        length = int(data[pos:sp])
        if length <= 0 or pos + length > len(data):
            raise ValueError("malformed PAX header record length")
        record = data[sp + 1 : pos + length - 1]  # without the trailing newline
        k, eq, v = record.partition(b"=")
        if not eq:
            raise ValueError("malformed PAX header record")
        out[k.decode("utf-8")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Header:
    """What the reader needs of a tar header: name, size, type (tarfile.TarInfo's names)."""

    __slots__ = ("name", "size", "type")

    def __init__(self, name: str, size: int, type: bytes):
        self.name, self.size, self.type = name, size, type


_USTAR = b"ustar\x0000"          # POSIX ustar magic + version (our writer's, and tarfile's default PAX format)
_PLAIN_TYPES = frozenset(b"0\x00xgLK")   # regular file, PAX record, GNU long name/link


def _header(block: bytes):
    """Parse one 512-byte tar header. The common case (ustar magic, octal numbers, a regular
    file, PAX or GNU long-name record) is read directly: ``tarfile.TarInfo.frombuf``
    decodes every field (mode, uid, mtime, ...) and took a third of a decode worker's time on
    small JPEGs (services/embedder/README.md). Anything else (GNU or V7 headers, base-256
    numbers, directories, sparse files, other types, a checksum that does not match) goes through
    ``frombuf``, which also raises ``tarfile.HeaderError`` for a bad checksum or number."""
    t = block[156:157]
    if block[257:265] != _USTAR or t[0] not in _PLAIN_TYPES or block[124] & 0x80 or block[148] & 0x80:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    try:
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise tarfile.InvalidHeaderError("invalid header") from None
    if stored != 256 + sum(block[:148]) + sum(block[156:]):   # the checksum field counts as 8 spaces
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")   # a signed sum, or a bad one
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix and t not in tarfile.GNU_TYPES:
        name = prefix.decode("utf-8", "surrogateescape") + "/" + name
    if t == tarfile.AREGTYPE and name.endswith("/"):
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")   # a V7-style directory
    return _Header(name, size, t)


def _iter_members(f: IO[bytes], source: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, data)`` for each regular file in a tar stream.

    Raises :class:`ShardError` on a short read, a bad checksum, or an archive that
    ends without its end-of-archive block (a tar cut at a member boundary)."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    offset = 0
    while True:
        header = f.read(BLOCK)
        if not header:
            if offset == 0:
                raise ShardError(f"{source} is empty (0 bytes): not a tar", source=source)
            raise ShardError(f"{source} is truncated: it ends at byte {offset} without the end-of-archive block",
                             source=source)
        if len(header) < BLOCK:
            raise ShardError(f"{source} is truncated: partial tar header at byte {offset}", source=source)
        if header == b"\0" * BLOCK:
            return  # end of archive (a second zero block and padding may follow)
        try:
            info = _header(header)
        except tarfile.HeaderError as e:
            raise ShardError(f"{source} is corrupt: bad tar header at byte {offset} ({e})", source=source) from None
        size = info.size
        if size < 0:
            raise ShardError(f"{source} is corrupt: negative member size at byte {offset}", source=source)
        if "size" in pax:
            size = int(pax["size"])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        data = f.read(padded)
        offset += BLOCK
        if len(data) < padded:
            raise ShardError(
                f"{source} is truncated: member {info.name!r} at byte {offset - BLOCK} needs {size} bytes, "
                f"{max(0, len(data))} left", source=source)
        offset += padded
        data = data[:size]
        t = info.type
        if t == tarfile.XHDTYPE:  # PAX header for the next member
            try:
                pax = _parse_pax(data)
            except (ValueError, UnicodeDecodeError) as e:
                raise ShardError(f"{source} is corrupt: {e} at byte {offset - padded - BLOCK}", source=source) from None
            continue
        if t == tarfile.XGLTYPE:  # global PAX header: nothing we use
            continue
        if t == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if t == tarfile.GNUTYPE_LONGLINK:
            continue
        name = pax.get("path") or long_name or info.name
        pax, long_name = {}, None
        if t in tarfile.REGULAR_TYPES:
            yield name, data


def _open_source(source) -> tuple[IO[bytes], str, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), "<bytes>", True
    if isinstance(source, (str, Path)):
        try:
            return open(source, "rb"), str(source), True
        except FileNotFoundError as e:
            from clipaudit.errors import NotFound

            raise NotFound(f"shard {source} does not exist") from e
        except OSError as e:
            raise InvalidInput(f"cannot read shard {source}: {e.strerror}") from e
    if hasattr(source, "read"):
        return source, getattr(source, "name", "<stream>"), False
    raise InvalidInput(f"cannot read a shard from a {type(source).__name__}: give a path, bytes or a binary file")


def iter_samples(source, handler: Handler = reraise) -> Iterator[dict[str, Any]]:
    """Samples of one tar shard, in order: ``{"__key__": key, ext: value, ...}``.

    ``txt`` members come back as ``str``, ``json`` as the parsed object, ``cls`` as
    ``int``, everything else as ``bytes``. Members are grouped while consecutive
    members share a key (WebDataset's convention; a writer keeps a sample's members
    together). Members whose basename has no extension are skipped.

    ``handler`` decides what happens on an error: it gets the exception (a
    :class:`ShardError` carrying ``key`` and ``source``) and returns True to go on
    (skip the bad sample) or False to stop; it may raise. After a *structural*
    error (truncated/corrupt tar) reading always stops, and the sample that was
    being assembled is dropped, since it may be missing members.
    """
    f, name, owns = _open_source(source)
    try:
        current: dict[str, Any] | None = None
        members = _iter_members(f, name)

        def finish(sample: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
            """Decode one grouped sample; (decoded or None, go_on)."""
            try:
                out: dict[str, Any] = {"__key__": sample["__key__"]}
                for ext, raw in sample.items():
                    if ext != "__key__":
                        try:
                            out[ext] = decode_value(ext, raw)
                        except (ValueError, UnicodeDecodeError) as e:
                            raise ShardError(f"cannot decode .{ext} of sample {sample['__key__']!r} in {name}: {e}",
                                             key=sample["__key__"], source=name) from e
                return out, True
            except ShardError as e:
                return None, bool(handler(e))

        while True:
            try:
                item = next(members)
            except StopIteration:
                break
            except ShardError as e:
                e.key = current["__key__"] if current else None
                handler(e)
                return  # nothing more can be read from this stream; drop the partial sample
            mname, data = item
            parts = split_member_name(mname)
            if parts is None:
                continue
            key, ext = parts
            if current is not None and key != current["__key__"]:
                out, go_on = finish(current)
                current = None
                if out is not None:
                    yield out
                if not go_on:
                    return
            if current is None:
                current = {"__key__": key}
            if ext in current:
                e = ShardError(f"duplicate member {mname!r} in {name}", key=key, source=name)
                if not handler(e):
                    return
                continue
            current[ext] = data
        if current is not None:
            out, _ = finish(current)
            if out is not None:
                yield out
    finally:
        if owns:
            f.close()


def iter_store_samples(store, keys: Iterable[str], handler: Handler = reraise) -> Iterator[dict[str, Any]]:
    """Samples of several shards in a store, in the order of ``keys``.

    A local store is read in place; other stores are fetched one shard at a time.
    Each sample gets ``__shard__`` (the shard key) besides ``__key__``."""
    for key in keys:
        local = getattr(store, "local_path", None)
        if local is not None:
            path = local(key)
            if not os.path.isfile(path):
                from clipaudit.errors import NotFound

                raise NotFound(f"{store.uri(key)} does not exist")
            source: Any = path
        else:
            source = store.get_bytes(key)
        for sample in iter_samples(source, handler=handler):
            sample["__shard__"] = key
            yield sample


__all__ = [
    "ShardWriter",
    "ShardInfo",
    "ShardError",
    "write_shards",
    "write_shard_bytes",
    "shard_key",
    "iter_samples",
    "iter_store_samples",
    "reraise",
    "warn_and_continue",
    "ignore_and_continue",
    "encode_value",
    "decode_value",
]
