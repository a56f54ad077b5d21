"""CAR v1 files: a header naming root CIDs, then the blocks.

Layout (``shared/spec/repository.md`` §7)::

    varint(len(H)) H              H = DAG-CBOR {"roots": [CID, ...], "version": 1}
    varint(len(C) + len(B)) C B   one section per block: binary CID, block bytes
    ...                           until the end of the input

varint = unsigned LEB128. Repo exports, ``getRepo``/``getRecord`` answers and
the ``blocks`` of firehose commits are CARs whose first root is a commit.

Reading (:class:`CarReader`, :func:`read_car`) is strict and total: on any
input it either succeeds or raises a :class:`~roost.errors.CarError` subclass
(or :class:`~roost.errors.BlockHashMismatch`), never anything else.

- the header must be exactly ``{"roots": [...], "version": 1}`` in strict
  DAG-CBOR, roots all CID links and (unless ``allow_no_roots``) at least one;
- varints must be minimal and at most 9 bytes (so below 2**63);
- section CIDs must be CIDv1 (CIDv0 is rejected); a section may not be empty
  or shorter than its CID;
- with ``verify_hashes`` (the default) every block is hashed and compared
  with its CID; CIDs with a hash function other than SHA-256 cannot be checked
  and are rejected;
- oversized header or block: :class:`~roost.errors.CarBlockTooLarge`; input
  that ends early anywhere: :class:`~roost.errors.CarTruncated`.

Duplicate blocks are yielded as they come; the order of blocks is free.

The reader is on hot paths (repo import, firehose ingest), so it scans a
``bytes`` buffer by offset: blessed 36-byte CIDs and one- or two-byte length
varints take a fast path; file input is read in large chunks and parsed the
same way, keeping memory bounded by the chunk plus the largest section.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, Protocol, Self

from roost.cbor import decode, encode
from roost.cid import CID, SHA2_256, _cid_from_link, _read_varint
from roost.errors import (
    BlockHashMismatch,
    CarBlockTooLarge,
    CarError,
    CarHeaderError,
    CarTruncated,
    CborDecodeError,
    CidError,
)
from roost.limits import MAX_CAR_BLOCK_BYTES, MAX_CAR_HEADER_BYTES, MAX_CID_BYTES

__all__ = [
    "CarReader",
    "CarWriter",
    "car_bytes",
    "car_sections",
    "encode_car_header",
    "read_car",
    "read_car_single_root",
    "write_car",
]

#: The first four bytes of the two blessed CID forms (v1, dag-cbor or raw, sha2-256/32).
_BLESSED_PREFIXES = (b"\x01\x71\x12\x20", b"\x01\x55\x12\x20")
#: Bytes asked of a file per read.
_READ_CHUNK = 1 << 20
#: Size of the chunks ``write_car`` yields and ``CarWriter`` writes.
_WRITE_CHUNK = 1 << 16
#: Longest varint ``roost.cid._read_varint`` accepts (9 x 7 = 63 bits).
_MAX_VARINT_BYTES = 9

_sha256 = hashlib.sha256


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


# -- varints ------------------------------------------------------------------


def _read_uvarint(buf: bytes, pos: int, end: int, base: int) -> tuple[int, int] | None:
    """The varint at ``buf[pos:end]`` as (value, next position); ``None`` if it is cut off.

    ``base`` is the input offset of ``buf[0]``, for messages.
    """
    head = buf[pos : min(end, pos + _MAX_VARINT_BYTES)]
    try:
        value, used = _read_varint(head, 0)
    except CidError:
        if all(b & 0x80 for b in head):
            if len(head) < _MAX_VARINT_BYTES:
                return None
            raise CarError(
                f"varint at offset {base + pos} is longer than {_MAX_VARINT_BYTES} bytes"
            ) from None
        raise CarError(f"varint at offset {base + pos} is not minimally encoded") from None
    return value, pos + used


_ONE_BYTE_VARINTS = tuple(bytes((i,)) for i in range(0x80))
_pack_two = struct.Struct("BB").pack


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE_VARINTS[n]
    if n < 0x4000:
        return _pack_two((n & 0x7F) | 0x80, n >> 7)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# -- reading ------------------------------------------------------------------


class CarReader:
    """Parse a CAR v1 from bytes or a binary file object.

    The header is read on construction (:attr:`roots`); iterating yields
    ``(CID, bytes)`` per block section, in file order. Over bytes the reader
    can be iterated again; over a file only once (it consumes the file).

    ``verify_hashes``: check every block against its CID (turn off only for
    bytes that were verified before). ``max_block_size``: largest block, CID
    not counted. ``max_header_size``: largest header. ``allow_no_roots``:
    accept ``roots: []`` (atproto CARs always name their commit).
    """

    __slots__ = (
        "_base",
        "_body",
        "_buf",
        "_eof",
        "_file",
        "_max_block",
        "_max_header",
        "_pos",
        "_used",
        "_verify",
        "roots",
    )

    roots: list[CID]

    def __init__(
        self,
        source: bytes | bytearray | memoryview | IO[bytes] | _Readable,
        *,
        verify_hashes: bool = True,
        max_block_size: int = MAX_CAR_BLOCK_BYTES,
        max_header_size: int = MAX_CAR_HEADER_BYTES,
        allow_no_roots: bool = False,
    ) -> None:
        self._verify = verify_hashes
        self._max_block = max_block_size
        self._max_header = max_header_size
        self._file: _Readable | None
        if type(source) is bytes:
            self._buf = source
            self._file = None
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self._buf = bytes(source)
            self._file = None
        elif callable(getattr(source, "read", None)):
            self._buf = b""
            self._file = source
        else:
            raise TypeError(
                f"CAR source must be bytes or a binary file object, not {type(source).__name__}"
            )
        self._eof = self._file is None
        self._pos = 0
        self._base = 0
        self._used = False
        self.roots = self._read_header(allow_no_roots)
        self._body = self._pos

    def __repr__(self) -> str:
        return f"CarReader(roots={self.roots!r})"

    # -- input ---------------------------------------------------------------

    def _fill(self, need: int) -> bool:
        """Have at least ``need`` bytes at ``self._pos``; False if the input ends first."""
        buf = self._buf
        pos = self._pos
        have = len(buf) - pos
        if have >= need:
            return True
        if self._eof or self._file is None:
            return False
        read = self._file.read
        parts = [buf[pos:]] if have else []
        target = max(need, _READ_CHUNK)
        while have < need:
            chunk = read(target - have)
            if not chunk:
                self._eof = True
                break
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"CAR file returned {type(chunk).__name__}, not bytes")
            parts.append(chunk)
            have += len(chunk)
        self._base += pos
        self._buf = b"".join(parts)
        self._pos = 0
        return have >= need

    # -- header --------------------------------------------------------------

    def _read_header(self, allow_no_roots: bool) -> list[CID]:
        if not self._fill(1):
            raise CarTruncated("empty input: no CAR header")
        self._fill(_MAX_VARINT_BYTES)
        got = _read_uvarint(self._buf, self._pos, len(self._buf), self._base)
        if got is None:
            raise CarTruncated("input ends inside the CAR header length")
        length, self._pos = got
        if length == 0:
            raise CarHeaderError("CAR header length is 0")
        if length > self._max_header:
            raise CarBlockTooLarge(
                f"CAR header is {length} bytes, more than the limit of {self._max_header}"
            )
        if not self._fill(length):
            raise CarTruncated(
                f"input ends inside the CAR header ({length} bytes declared, "
                f"{len(self._buf) - self._pos} present)"
            )
        raw = self._buf[self._pos : self._pos + length]
        self._pos += length
        try:
            header = decode(raw)
        except CborDecodeError as exc:
            raise CarHeaderError(f"CAR header is not strict DAG-CBOR: {exc.message}") from None
        return _check_header(header, allow_no_roots)

    # -- sections ------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        if self._file is None:
            return self._iter_bytes()
        if self._used:
            raise RuntimeError("a CarReader over a file can be iterated only once")
        self._used = True
        return self._iter_file()

    def _iter_bytes(self) -> Generator[tuple[CID, bytes], None, None]:
        yield from self._scan(self._buf, self._body, True)

    def _iter_file(self) -> Generator[tuple[CID, bytes], None, None]:
        while True:
            pos, need = yield from self._scan(self._buf, self._pos, self._eof)
            self._pos = pos
            if self._eof:
                return
            self._fill(need)

    def _scan(
        self, buf: bytes, pos: int, final: bool
    ) -> Generator[tuple[CID, bytes], None, tuple[int, int]]:
        """Yield the sections in ``buf[pos:]``.

        Returns ``(pos, need)`` at the first section that is not complete in
        ``buf``: its start and how many bytes from there it needs at least.
        With ``final`` (no more input) an incomplete section raises instead.
        """
        end = len(buf)
        verify = self._verify
        max_block = self._max_block
        max_section = max_block + MAX_CID_BYTES
        prefixes = _BLESSED_PREFIXES
        # the decoder's CID constructor: the cheapest way to build a CID
        make_cid = _cid_from_link
        hash_cbor = CID.for_cbor_bytes
        hash_raw = CID.for_raw
        while pos < end:
            # section length: one- and two-byte varints inline
            n = buf[pos]
            if n < 0x80:
                if n == 0:
                    raise CarError(f"empty block section at offset {self._base + pos}")
                p = pos + 1
            elif pos + 1 < end and 0 < buf[pos + 1] < 0x80:
                n = (n & 0x7F) | (buf[pos + 1] << 7)
                p = pos + 2
            else:
                got = _read_uvarint(buf, pos, end, self._base)
                if got is None:
                    if final:
                        raise CarTruncated(
                            f"input ends inside a section length at offset {self._base + pos}"
                        )
                    return pos, end - pos + 1
                n, p = got
                if n > max_section:
                    raise CarBlockTooLarge(
                        f"block section at offset {self._base + pos} is {n} bytes, "
                        f"more than the limit of {max_section}"
                    )
            stop = p + n
            if stop > end:
                if final:
                    raise CarTruncated(
                        f"input ends inside the block section at offset {self._base + pos} "
                        f"({n} bytes declared, {end - p} present)"
                    )
                return pos, stop - pos
            if n >= 36 and buf.startswith(prefixes, p):
                if n - 36 > max_block:
                    raise CarBlockTooLarge(
                        f"block at offset {self._base + pos} is {n - 36} bytes, "
                        f"more than the limit of {max_block}"
                    )
                block = buf[p + 36 : stop]
                cid = make_cid(buf[p : p + 36])
                # hashing through the CID type uses the extension's fast SHA-256
                if verify and (hash_cbor(block) if buf[p + 1] == 0x71 else hash_raw(block)) != cid:
                    raise BlockHashMismatch(
                        f"block at offset {self._base + pos} does not hash to its CID {cid}"
                    )
                yield cid, block
            else:
                yield self._other_section(buf, pos, p, stop)
            pos = stop
        return pos, 1

    def _other_section(self, buf: bytes, start: int, p: int, stop: int) -> tuple[CID, bytes]:
        """A section whose CID is not in the blessed 36-byte form (slow path)."""
        offset = self._base + start
        n = stop - p
        if n >= 2 and buf[p] == 0x12 and buf[p + 1] == 0x20:
            raise CarError(f"CIDv0 in the block section at offset {offset}")
        head = buf[p : min(stop, p + MAX_CID_BYTES)]
        q = 0
        try:
            version, q = _read_varint(head, q)
            if version != 1:
                raise CarError(
                    f"CID version {version} in the block section at offset {offset} "
                    "(only CIDv1 is allowed)"
                )
            _codec, q = _read_varint(head, q)
            hash_code, q = _read_varint(head, q)
            digest_len, q = _read_varint(head, q)
        except CidError as exc:
            rest = head[q:]  # from the start of the varint that failed
            if len(head) == n and all(b & 0x80 for b in rest):
                raise CarError(
                    f"block section at offset {offset} ({n} bytes) is shorter than its CID"
                ) from None
            raise CarError(
                f"bad CID in the block section at offset {offset}: {exc.message}"
            ) from None
        cid_len = q + digest_len
        if cid_len > n:
            raise CarError(
                f"block section at offset {offset} ({n} bytes) is shorter than its CID "
                f"({cid_len} bytes)"
            )
        try:
            cid = CID(buf[p : p + cid_len])
        except CidError as exc:
            raise CarError(
                f"bad CID in the block section at offset {offset}: {exc.message}"
            ) from None
        block = buf[p + cid_len : stop]
        if len(block) > self._max_block:
            raise CarBlockTooLarge(
                f"block at offset {offset} is {len(block)} bytes, "
                f"more than the limit of {self._max_block}"
            )
        if self._verify:
            if hash_code != SHA2_256 or digest_len != 32:
                raise CarError(
                    f"unsupported hash function 0x{hash_code:x} ({digest_len}-byte digest) "
                    f"for the block at offset {offset}: only sha2-256 can be verified"
                )
            if _sha256(block).digest() != buf[p + q : p + cid_len]:
                raise BlockHashMismatch(f"block at offset {offset} does not hash to its CID {cid}")
        return cid, block


def _check_header(header: Any, allow_no_roots: bool) -> list[CID]:
    if type(header) is not dict:
        raise CarHeaderError(f"CAR header is not a map but {type(header).__name__}")
    if "version" not in header:
        raise CarHeaderError("CAR header has no version")
    version = header["version"]
    if type(version) is not int or version != 1:
        raise CarHeaderError(f"CAR version {version!r} is not supported (only 1)")
    if "roots" not in header:
        raise CarHeaderError("CAR header has no roots")
    extra = sorted(set(header) - {"roots", "version"})
    if extra:
        raise CarHeaderError(f"CAR header has unexpected keys: {', '.join(extra)}")
    roots = header["roots"]
    if type(roots) is not list:
        raise CarHeaderError(f"CAR header roots is not an array but {type(roots).__name__}")
    for root in roots:
        if type(root) is not CID:
            raise CarHeaderError(f"CAR header root is not a CID link but {type(root).__name__}")
    if not roots and not allow_no_roots:
        raise CarHeaderError("CAR header has no roots")
    return roots


def read_car(
    data: bytes | bytearray | memoryview | IO[bytes] | _Readable,
    *,
    verify_hashes: bool = True,
    max_block_size: int = MAX_CAR_BLOCK_BYTES,
    max_header_size: int = MAX_CAR_HEADER_BYTES,
    allow_no_roots: bool = False,
) -> tuple[list[CID], dict[CID, bytes]]:
    """A whole CAR: its roots and its blocks by CID (duplicates collapse)."""
    reader = CarReader(
        data,
        verify_hashes=verify_hashes,
        max_block_size=max_block_size,
        max_header_size=max_header_size,
        allow_no_roots=allow_no_roots,
    )
    return reader.roots, dict(reader)


def read_car_single_root(
    data: bytes | bytearray | memoryview | IO[bytes] | _Readable,
    *,
    verify_hashes: bool = True,
    max_block_size: int = MAX_CAR_BLOCK_BYTES,
    max_header_size: int = MAX_CAR_HEADER_BYTES,
) -> tuple[CID, dict[CID, bytes]]:
    """A whole CAR that names exactly one root; :class:`CarHeaderError` otherwise."""
    reader = CarReader(
        data,
        verify_hashes=verify_hashes,
        max_block_size=max_block_size,
        max_header_size=max_header_size,
    )
    if len(reader.roots) != 1:
        raise CarHeaderError(f"CAR has {len(reader.roots)} roots, expected exactly one")
    return reader.roots[0], dict(reader)


# -- writing ------------------------------------------------------------------


def encode_car_header(roots: Iterable[CID]) -> bytes:
    """The header (with its length varint) for a CAR naming ``roots``."""
    roots = list(roots)
    for root in roots:
        if type(root) is not CID:
            raise TypeError(f"CAR roots must be CIDs, not {type(root).__name__}")
    header = encode({"roots": roots, "version": 1})
    return _varint(len(header)) + header


def _block_items(
    blocks: Iterable[tuple[CID, bytes]] | Mapping[CID, bytes],
) -> Iterable[tuple[CID, bytes]]:
    return blocks.items() if isinstance(blocks, Mapping) else blocks


def write_car(
    roots: Iterable[CID],
    blocks: Iterable[tuple[CID, bytes]] | Mapping[CID, bytes],
) -> Iterator[bytes]:
    """A CAR as chunks: the header, then the sections batched into ~64 KiB pieces.

    ``blocks`` is consumed lazily (a mapping's items are used); hashes are not
    checked. atproto readers expect exactly one root: the commit.
    """
    yield encode_car_header(roots)
    parts: list[bytes] = []
    append = parts.append
    one_byte = _ONE_BYTE_VARINTS
    pack_two = _pack_two
    size = 0
    for cid, data in _block_items(blocks):
        raw = cid.bytes
        n = len(raw) + len(data)
        if n < 0x80:
            append(one_byte[n])
        elif n < 0x4000:
            append(pack_two((n & 0x7F) | 0x80, n >> 7))
        else:
            append(_varint(n))
        append(raw)
        append(data)
        size += n
        if size >= _WRITE_CHUNK:
            yield b"".join(parts)
            parts.clear()
            size = 0
    if parts:
        yield b"".join(parts)


def car_sections(rows: Iterable[tuple[bytes, bytes]]) -> bytes:
    """CAR block sections for ``(binary CID, block)`` rows, joined (no header).

    For blocks read back from our own storage, where the CID is already in
    its binary form: nothing is parsed or hashed.
    """
    parts: list[bytes] = []
    append = parts.append
    one_byte = _ONE_BYTE_VARINTS
    pack_two = _pack_two
    for raw, data in rows:
        n = len(raw) + len(data)
        if n < 0x80:
            append(one_byte[n])
        elif n < 0x4000:
            append(pack_two((n & 0x7F) | 0x80, n >> 7))
        else:
            append(_varint(n))
        append(raw)
        append(data)
    return b"".join(parts)


def car_bytes(
    roots: Iterable[CID],
    blocks: Iterable[tuple[CID, bytes]] | Mapping[CID, bytes],
) -> bytes:
    """A whole CAR as one ``bytes``."""
    return b"".join(write_car(roots, blocks))


class CarWriter:
    """Write a CAR to a binary file object, one block at a time.

    The header is written on construction; sections are buffered up to
    ~64 KiB and written on :meth:`flush` / :meth:`close` / leaving a ``with``
    block. The file object itself is not closed.
    """

    __slots__ = ("_file", "_parts", "_size", "blocks_written", "bytes_written")

    def __init__(self, fileobj: IO[bytes] | Any, roots: Iterable[CID]) -> None:
        self._file = fileobj
        self._parts: list[bytes] = []
        self._size = 0
        header = encode_car_header(roots)
        fileobj.write(header)
        #: Block sections written so far.
        self.blocks_written = 0
        #: Bytes written so far, header included (buffered ones too).
        self.bytes_written = len(header)

    def write_block(self, cid: CID, data: bytes) -> None:
        """Append one block section (the hash is not checked)."""
        raw = cid.bytes
        n = len(raw) + len(data)
        head = _varint(n)
        self._parts += (head, raw, data)
        self._size += n
        self.blocks_written += 1
        self.bytes_written += len(head) + n
        if self._size >= _WRITE_CHUNK:
            self.flush()

    def write_blocks(self, blocks: Iterable[tuple[CID, bytes]] | Mapping[CID, bytes]) -> None:
        """Append several block sections."""
        for cid, data in _block_items(blocks):
            self.write_block(cid, data)

    def flush(self) -> None:
        """Write the buffered sections to the file object."""
        if self._parts:
            self._file.write(b"".join(self._parts))
            self._parts.clear()
            self._size = 0

    def close(self) -> None:
        """Flush; the file object stays open."""
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
