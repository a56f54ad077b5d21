"""Blobs on disk: content-addressed, per account, streamed in and out.

Lifecycle (data-model.md §5): ``uploadBlob`` streams the bytes into a
*temporary* file while hashing them; a record write that references the blob
makes it *permanent* (an atomic rename into the account's directory); a blob no
current record references is deleted; temporary uploads nobody referenced are
removed after a grace period (``cleanup_temp``).

Layout under ``root`` (one directory per account, so the same bytes uploaded by
two accounts are two independent files; deleting one never touches the other)::

    root/tmp/<32 hex>.part            an upload in progress (removed on failure)
    root/tmp/<32 hex>.<cid>           a finished temporary upload; the name is its temp key
    root/accounts/<account dir>/<cid> the permanent blobs of one account
    root/trash/<32 hex>/              an account directory being deleted

``<account dir>`` is the DID with every character outside ``a-z 0-9 . -``
written as ``_`` plus two hex digits (``did:plc:abc`` -> ``did_3aplc_3aabc``):
injective, free of ``/``, ``:`` and ``%``, safe on case-insensitive file
systems, and never ``.`` or ``..``. A name longer than
:data:`MAX_ACCOUNT_DIR_CHARS` becomes ``h_<sha256 of the DID>`` (readable names
always start with ``did_``). ``<cid>`` is the canonical base32 CID string
(``b`` + ``a-z2-7``). DIDs, CIDs and temp keys are validated before they touch
a path.

Durability: ``upload`` fsyncs the file and ``root/tmp`` before it returns, and
``make_permanent`` fsyncs the account directory after the rename, so an
acknowledged upload or write survives ``kill -9`` and power loss.

File I/O runs in worker threads (``asyncio.to_thread``), batched to
:data:`WRITE_BATCH_BYTES` on the way in and :data:`READ_CHUNK_BYTES` on the way
out, so the event loop never waits on the disk.

:func:`blob_response` answers ``com.atproto.sync.getBlob`` with the serving
headers of sync.md §2 and single-range ``Range`` support.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.responses import JSONResponse, Response, StreamingResponse

from roost.cid import CID
from roost.errors import PayloadTooLarge, RoostError
from roost.syntax import ensure_did

__all__ = [
    "BLOB_CACHE_CONTROL",
    "BLOB_CSP",
    "DEFAULT_MAX_BLOB_BYTES",
    "MAX_ACCOUNT_DIR_CHARS",
    "READ_CHUNK_BYTES",
    "SNIFF_BYTES",
    "TEMP_GRACE_SECONDS",
    "WRITE_BATCH_BYTES",
    "BlobNotFound",
    "BlobReader",
    "DiskBlobStore",
    "InvalidBlobKey",
    "RangeNotSatisfiable",
    "UploadedBlob",
    "account_dirname",
    "blob_response",
    "mime_compatible",
    "normalize_mime",
    "parse_range",
    "sniff_mime",
]

log = logging.getLogger(__name__)

# -- limits -----------------------------------------------------------------

#: Default upload limit: 50 MiB. The reference PDS code falls back to 5 MiB when
#: ``PDS_BLOB_UPLOAD_LIMIT`` is unset, but its self-host installer writes
#: 52,428,800 (later 104,857,600, for video); roost's ``PdsConfig.max_blob_bytes``
#: uses this value.
DEFAULT_MAX_BLOB_BYTES = 50 * 1024 * 1024
#: Bytes gathered from the request before one write (and hash update) in a thread.
WRITE_BATCH_BYTES = 1024 * 1024
#: Bytes read per chunk when serving a blob.
READ_CHUNK_BYTES = 64 * 1024
#: Leading bytes kept for MIME sniffing.
SNIFF_BYTES = 4096
#: Temporary uploads older than this are orphans (spec: >= 1 h, several hours recommended).
TEMP_GRACE_SECONDS = 6 * 3600
#: Longest readable account directory name; longer DIDs are hashed.
MAX_ACCOUNT_DIR_CHARS = 200
#: ``Cache-Control`` on served blobs: bytes under a CID never change, but a blob
#: can be deleted or its account taken down, and caches must follow within minutes.
BLOB_CACHE_CONTROL = "public, max-age=300"
#: ``Content-Security-Policy`` on served blobs (data-model.md §5).
BLOB_CSP = "default-src 'none'; sandbox"
#: Longest ``Range`` header we parse at all.
_MAX_RANGE_HEADER = 200

_RAW_SHA256_PREFIX = b"\x01\x55\x12\x20"
_OCTET_STREAM = "application/octet-stream"

# -- errors -----------------------------------------------------------------


class BlobNotFound(RoostError):
    """No such blob for this account (lexicon error ``BlobNotFound``, 400)."""

    error = "BlobNotFound"


class InvalidBlobKey(RoostError):
    """A temporary-upload key that this store did not hand out."""


class RangeNotSatisfiable(RoostError):
    """A ``Range`` that starts past the end of the blob (416)."""

    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


# -- names and paths ----------------------------------------------------------

_DIR_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_cid_name_match = re.compile(r"b[a-z2-7]{1,200}").fullmatch
_temp_key_match = re.compile(r"([0-9a-f]{32})\.(b[a-z2-7]{58})").fullmatch
_part_name_match = re.compile(r"[0-9a-f]{32}\.part").fullmatch


def account_dirname(did: str) -> str:
    """The directory name of an account's blobs (raises ``InvalidDid``)."""
    ensure_did(did)
    name = "".join(c if c in _DIR_PLAIN else f"_{ord(c):02x}" for c in did)
    if len(name) > MAX_ACCOUNT_DIR_CHARS:
        return "h_" + hashlib.sha256(did.encode("ascii")).hexdigest()
    return name


def _cid_name(cid: CID | str) -> str:
    """The canonical string of a CID, checked to be path-safe (raises ``CidError``)."""
    name = str(CID.parse(cid))
    if _cid_name_match(name) is None:  # pragma: no cover - CID strings are base32
        raise BlobNotFound("unusable CID")
    return name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- MIME types ---------------------------------------------------------------

_mime_match = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
).fullmatch


def normalize_mime(value: str | None) -> str | None:
    """``type/subtype`` lower-cased without parameters, or None if not a valid MIME type.

    Wildcards (``*/*``), empty values and anything with control characters are None.
    """
    if not value or len(value) > 512:
        return None
    essence = value.split(";", 1)[0].strip().lower()
    return essence if _mime_match(essence) is not None else None


# ISO base media (mp4, mov, heic, avif): the major brand at bytes 8..12.
_FTYP_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"hevc": "image/heic",
    b"hevx": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"crx ": "image/x-canon-cr3",
}

# (offset, magic bytes, MIME type): checked in order, first match wins.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"\xff\x0a", "image/jxl"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "image/jxl"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"\x1f\x8b\x08", "application/gzip"),
    (0, b"\x00\x00\x01\x00", "image/x-icon"),
)

_RIFF_FORMS = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"pnot")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]").search
_MARKUP = (
    ("<!doctype html", "text/html"),
    ("<html", "text/html"),
    ("<head", "text/html"),
    ("<body", "text/html"),
    ("<script", "text/html"),
    ("<svg", "image/svg+xml"),
    ("<?xml", "application/xml"),
)
#: Sniffed types that come from looking at text rather than from a signature:
#: they never override a valid declared type.
_WEAK_TYPES = frozenset(
    {"text/plain", "text/html", "application/json", "application/xml", "image/svg+xml"}
)


def _sniff_magic(head: bytes) -> str | None:
    for offset, magic, mime in _MAGIC:
        if head.startswith(magic, offset):
            return mime
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _RIFF_FORMS.get(head[8:12])
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _sniff_ftyp(head)
    if head[4:8] in _QUICKTIME_ATOMS:
        return "video/quicktime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        top = head[:64]
        if b"webm" in top:
            return "video/webm"
        return "video/x-matroska"
    if head.startswith(b"OggS"):
        return "video/ogg" if b"\x80theora" in head[:512] else "audio/ogg"
    if head.startswith(b"BM") and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "image/bmp"
    if len(head) >= 3 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        if head[1] & 0xF6 == 0xF0:
            return "audio/aac"  # ADTS: MPEG sync word with layer bits 00
        version = (head[1] >> 3) & 3
        layer = (head[1] >> 1) & 3
        bitrate = head[2] >> 4
        if version != 1 and layer != 0 and bitrate != 0xF:
            return "audio/mpeg"
    return None


def _sniff_ftyp(head: bytes) -> str:
    major = head[8:12]
    box_end = min(int.from_bytes(head[0:4], "big"), len(head))
    compatible = {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major in (b"mif1", b"msf1"):
        if compatible & {b"avif", b"avis"}:
            return "image/avif"
        if compatible & {b"heic", b"heix", b"heim", b"heis"}:
            return "image/heic"
    mime = _FTYP_BRANDS.get(major)
    if mime is not None:
        return mime
    if major.startswith(b"3gp"):
        return "video/3gpp"
    if major.startswith(b"3g2"):
        return "video/3gpp2"
    return "video/mp4"


def _sniff_text(head: bytes, complete: bool) -> str | None:
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        return None
    if not text or _TEXT_CONTROL(text) is not None:
        return None
    start = text.lstrip()
    if start[:1] in ("{", "["):
        return "application/json"
    lowered = start[:16].lower()
    for prefix, mime in _MARKUP:
        if lowered.startswith(prefix):
            return mime
    return "text/plain"


def sniff_mime(head: bytes, *, complete: bool = True) -> str | None:
    """The MIME type the leading bytes of a file show, or None if they show nothing.

    Signatures (images, audio, video, PDF, archives) are checked first; otherwise
    valid UTF-8 without control characters is ``text/plain`` (or JSON, HTML, XML,
    SVG by its first characters). ``complete`` says ``head`` is the whole file
    (when False, a multi-byte character cut at the end is not an error).
    """
    return _sniff_magic(head) or _sniff_text(head, complete)


# Aliases and container families: a declared type in the same group as the
# sniffed one is not a mismatch.
_MIME_GROUPS = (
    {"image/jpeg", "image/jpg", "image/pjpeg"},
    {"image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"},
    {"image/avif", "image/avif-sequence"},
    {"image/bmp", "image/x-ms-bmp", "image/x-bmp"},
    {"image/x-icon", "image/vnd.microsoft.icon"},
    {"audio/mpeg", "audio/mp3", "audio/mpeg3", "audio/x-mpeg"},
    {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"},
    {"audio/flac", "audio/x-flac"},
    {"audio/aac", "audio/x-aac", "audio/aacp"},
    {"video/mp4", "audio/mp4", "audio/m4a", "audio/x-m4a", "video/x-m4v", "video/quicktime",
     "video/3gpp", "video/3gpp2", "audio/3gpp", "audio/3gpp2"},
    {"video/webm", "audio/webm", "video/x-matroska", "audio/x-matroska"},
    {"audio/ogg", "video/ogg", "application/ogg", "audio/opus", "audio/vorbis"},
    {"application/pdf", "application/x-pdf"},
    {"application/zip", "application/x-zip-compressed"},
    {"application/gzip", "application/x-gzip"},
    {"video/x-msvideo", "video/avi", "video/msvideo"},
)
_GROUP_OF = {mime: i for i, group in enumerate(_MIME_GROUPS) for mime in group}
_TEXTUAL_APPLICATION = frozenset(
    {"application/json", "application/xml", "application/javascript", "application/x-ndjson"}
)


def _is_textual(mime: str) -> bool:
    return (
        mime.startswith("text/")
        or mime.endswith(("+xml", "+json"))
        or mime in _TEXTUAL_APPLICATION
    )


def mime_compatible(declared: str, sniffed: str) -> bool:
    """True if content sniffed as ``sniffed`` fits the client's ``declared`` type."""
    if declared == sniffed or declared == _OCTET_STREAM:
        return True
    group = _GROUP_OF.get(sniffed)
    if group is not None and _GROUP_OF.get(declared) == group:
        return True
    return sniffed in _WEAK_TYPES and _is_textual(declared)


@dataclass(frozen=True, slots=True)
class UploadedBlob:
    """A finished temporary upload.

    ``mime_type`` is what to store: the sniffed signature type if there is one,
    else the declared type if it is a valid MIME type, else a sniffed text type,
    else ``application/octet-stream``. ``sniffed_mime`` and ``declared_mime``
    (normalised) are both kept so the PDS can apply its own policy on
    :attr:`mime_mismatch`.
    """

    cid: CID
    size: int
    mime_type: str
    temp_key: str
    sniffed_mime: str | None
    declared_mime: str | None

    @property
    def mime_mismatch(self) -> bool:
        """True if the client declared a type the content does not look like."""
        if self.declared_mime is None or self.sniffed_mime is None:
            return False
        return not mime_compatible(self.declared_mime, self.sniffed_mime)


def _choose_mime(sniffed: str | None, declared: str | None) -> str:
    if sniffed is not None and sniffed not in _WEAK_TYPES:
        return sniffed
    if declared is not None:
        return declared
    return sniffed or _OCTET_STREAM


# -- the writer of one upload -------------------------------------------------


class _TempWriter:
    """One upload being written to ``tmp/<hex>.part``; thread-safe against abort."""

    def __init__(self, tmp_dir: Path, token: str) -> None:
        self.tmp_dir = tmp_dir
        self.token = token
        self.path = tmp_dir / f"{token}.part"
        self.fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self.hasher = hashlib.sha256()
        self.lock = threading.Lock()
        self.final_path: Path | None = None

    def write(self, data: bytes | bytearray) -> None:
        with self.lock:
            if self.fd is None:
                raise OSError("upload already closed")
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            self.hasher.update(data)

    def finish(self) -> tuple[bytes, str]:
        """fsync, close, rename to ``<hex>.<cid>``, fsync the directory."""
        with self.lock:
            if self.fd is None:
                raise OSError("upload already closed")
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            digest = self.hasher.digest()
            key = f"{self.token}.{CID.from_bytes(_RAW_SHA256_PREFIX + digest)}"
            self.final_path = self.tmp_dir / key
            os.replace(self.path, self.final_path)
            _fsync_dir(self.tmp_dir)
            return digest, key

    def abort(self) -> None:
        """Close and remove the file, partial or finished (waits for a write in flight)."""
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.path.unlink(missing_ok=True)
            if self.final_path is not None:
                self.final_path.unlink(missing_ok=True)


# -- reading ------------------------------------------------------------------


class BlobReader:
    """An open permanent blob: its size and an fd read with ``pread`` in a thread.

    Iterate :meth:`iter_range` once; the file is closed when the iteration ends
    (or is cancelled), on :meth:`close`, or when the reader is collected.
    """

    # bound at class creation: __del__ may run late in interpreter shutdown
    _close_fd = staticmethod(os.close)

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self.size = size

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._close_fd(fd)

    def __del__(self) -> None:
        self.close()

    async def iter_range(
        self, start: int = 0, end: int | None = None, *, chunk_size: int = READ_CHUNK_BYTES
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` (``end`` None = to the end) in chunks."""
        stop = self.size if end is None else min(end, self.size)
        pos = max(start, 0)
        try:
            while pos < stop:
                fd = self._fd
                if fd is None:
                    raise OSError("blob reader is closed")
                chunk = await asyncio.to_thread(os.pread, fd, min(chunk_size, stop - pos), pos)
                if not chunk:  # pragma: no cover - blobs are never truncated in place
                    break
                pos += len(chunk)
                yield chunk
        finally:
            self.close()


# -- the store ------------------------------------------------------------------


class DiskBlobStore:
    """Per-account blobs under ``root`` (see the module docstring for the layout).

    Every method that takes a DID raises ``InvalidDid`` for a malformed one, and
    ``CidError`` for a malformed CID string, before any path is built.
    """

    def __init__(self, root: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.accounts_dir = self.root / "accounts"
        self.trash_dir = self.root / "trash"
        self._clock = clock
        for d in (self.root, self.tmp_dir, self.accounts_dir, self.trash_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------

    def _account_dir(self, did: str) -> Path:
        return self.accounts_dir / account_dirname(did)

    def _blob_path(self, did: str, cid: CID | str) -> Path:
        return self._account_dir(did) / _cid_name(cid)

    def _temp_path(self, temp_key: str) -> tuple[Path, str]:
        m = _temp_key_match(temp_key) if isinstance(temp_key, str) else None
        if m is None:
            raise InvalidBlobKey("invalid temporary blob key")
        return self.tmp_dir / temp_key, m.group(2)

    # -- upload --------------------------------------------------------------

    async def upload(
        self,
        did: str,
        stream: AsyncIterable[bytes],
        *,
        max_size: int = DEFAULT_MAX_BLOB_BYTES,
        mime_hint: str | None = None,
    ) -> UploadedBlob:
        """Stream bytes into a temporary file; hash, sniff and size them on the way.

        Raises :class:`PayloadTooLarge` as soon as more than ``max_size`` bytes
        arrive; on that or any other failure (including cancellation) the partial
        file is removed. On return the file and its directory entry are on disk.
        """
        ensure_did(did)
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        token = secrets.token_hex(16)
        writer = await asyncio.to_thread(_TempWriter, self.tmp_dir, token)
        size = 0
        head = bytearray()
        pending = bytearray()
        try:
            async for chunk in stream:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_size:
                    raise PayloadTooLarge(f"blob is larger than {max_size} bytes")
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                pending += chunk
                if len(pending) >= WRITE_BATCH_BYTES:
                    batch, pending = pending, bytearray()
                    await asyncio.to_thread(writer.write, batch)
            if pending:
                await asyncio.to_thread(writer.write, pending)
            digest, key = await asyncio.to_thread(writer.finish)
        except BaseException:
            writer.abort()
            raise
        sniffed = sniff_mime(bytes(head), complete=size <= SNIFF_BYTES)
        declared = normalize_mime(mime_hint)
        return UploadedBlob(
            cid=CID.from_bytes(_RAW_SHA256_PREFIX + digest),
            size=size,
            mime_type=_choose_mime(sniffed, declared),
            temp_key=key,
            sniffed_mime=sniffed,
            declared_mime=declared,
        )

    # -- lifecycle -----------------------------------------------------------

    async def make_permanent(self, did: str, temp_key: str, cid: CID | str) -> None:
        """Move a temporary upload into the account (atomic rename, then fsync).

        Idempotent: if the account already holds the blob, the temporary file
        (if any) is just removed. Raises :class:`BlobNotFound` if neither exists,
        and :class:`InvalidBlobKey` if ``temp_key`` was not issued for ``cid``.
        """
        name = _cid_name(cid)
        account_dir = self._account_dir(did)
        src, key_cid = self._temp_path(temp_key)
        if key_cid != name:
            raise InvalidBlobKey("temporary blob key belongs to another CID")
        await asyncio.to_thread(self._make_permanent_sync, src, account_dir, name)

    def _make_permanent_sync(self, src: Path, account_dir: Path, name: str) -> None:
        dst = account_dir / name
        if dst.exists():
            src.unlink(missing_ok=True)
            return
        if not account_dir.is_dir():
            account_dir.mkdir(exist_ok=True)
            _fsync_dir(self.accounts_dir)
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            if dst.exists():  # a concurrent call won
                return
            raise BlobNotFound(f"no temporary upload for blob {name}") from None
        _fsync_dir(account_dir)

    async def delete(self, did: str, cid: CID | str) -> bool:
        """Remove one permanent blob of an account; False if it was not there."""
        path = self._blob_path(did, cid)
        return await asyncio.to_thread(self._unlink_durably, path)

    @staticmethod
    def _unlink_durably(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    async def delete_temp(self, temp_key: str) -> bool:
        """Remove a temporary upload; False if it was not there."""
        path, _ = self._temp_path(temp_key)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

    async def temp_exists(self, temp_key: str) -> bool:
        path, _ = self._temp_path(temp_key)
        return await asyncio.to_thread(path.is_file)

    async def delete_account(self, did: str) -> None:
        """Remove every permanent blob of an account.

        The directory is first renamed into ``trash/`` (atomic: readers see all
        or nothing), then removed; ``cleanup_temp`` finishes a removal a crash
        interrupted.
        """
        account_dir = self._account_dir(did)
        await asyncio.to_thread(self._delete_account_sync, account_dir)

    def _delete_account_sync(self, account_dir: Path) -> None:
        doomed = self.trash_dir / secrets.token_hex(16)
        try:
            os.replace(account_dir, doomed)
        except FileNotFoundError:
            return
        _fsync_dir(self.accounts_dir)
        shutil.rmtree(doomed, ignore_errors=True)

    async def cleanup_temp(self, older_than_s: float = TEMP_GRACE_SECONDS) -> int:
        """Remove temporary uploads (finished or partial) older than ``older_than_s``.

        Age is the file's modification time against the store's clock. Also
        empties ``trash/``. Returns the number of temporary files removed.
        """
        cutoff = self._clock() - older_than_s
        return await asyncio.to_thread(self._cleanup_sync, cutoff)

    def _cleanup_sync(self, cutoff: float) -> int:
        removed = 0
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                if not (_temp_key_match(entry.name) or _part_name_match(entry.name)):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        with os.scandir(self.trash_dir) as entries:
            for entry in entries:
                shutil.rmtree(entry.path, ignore_errors=True)
        if removed:
            log.info("blob temp cleanup removed=%d", removed)
        return removed

    # -- reading -------------------------------------------------------------

    async def exists(self, did: str, cid: CID | str) -> bool:
        path = self._blob_path(did, cid)
        return await asyncio.to_thread(path.is_file)

    async def size(self, did: str, cid: CID | str) -> int:
        """Size in bytes of a permanent blob; :class:`BlobNotFound` if absent."""
        path = self._blob_path(did, cid)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            raise BlobNotFound("Blob not found") from None
        return st.st_size

    async def open(self, did: str, cid: CID | str) -> BlobReader:
        """Open a permanent blob for reading; :class:`BlobNotFound` if absent."""
        path = self._blob_path(did, cid)
        return await asyncio.to_thread(self._open_sync, path)

    @staticmethod
    def _open_sync(path: Path) -> BlobReader:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound("Blob not found") from None
        try:
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        return BlobReader(fd, size)

    async def open_range(
        self, did: str, cid: CID | str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of a permanent blob (``end`` None = to the end).

        The blob is opened on the first iteration (:class:`BlobNotFound` then);
        use :meth:`open` to learn its size or absence before streaming.
        """
        reader = await self.open(did, cid)
        async for chunk in reader.iter_range(start, end):
            yield chunk

    async def read(self, did: str, cid: CID | str) -> bytes:
        """A whole permanent blob in memory (for small blobs and tests)."""
        return b"".join([chunk async for chunk in self.open_range(did, cid)])

    async def usage(self, did: str) -> int:
        """Bytes of permanent blobs stored for an account."""
        account_dir = self._account_dir(did)
        return await asyncio.to_thread(self._usage_sync, account_dir)

    @staticmethod
    def _usage_sync(account_dir: Path) -> int:
        total = 0
        try:
            with os.scandir(account_dir) as entries:
                for entry in entries:
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return 0
        return total

    async def list_cids(self, did: str) -> list[str]:
        """CID strings of an account's permanent blobs, sorted."""
        account_dir = self._account_dir(did)

        def scan() -> list[str]:
            try:
                return sorted(n for n in os.listdir(account_dir) if _cid_name_match(n))
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(scan)


# -- HTTP -----------------------------------------------------------------------

_range_match = re.compile(r"bytes=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*").fullmatch


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range ``(start, end_exclusive)`` a ``Range`` header asks for.

    None means "send the whole blob": no header, another unit, several ranges,
    a malformed or inverted range (RFC 9110 lets a server ignore those), or an
    empty blob. Raises :class:`RangeNotSatisfiable` when the range starts at or
    past the end, or is a zero-length suffix.
    """
    if not header or size <= 0 or len(header) > _MAX_RANGE_HEADER:
        return None
    m = _range_match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        if last:
            end = int(last)
            if end < start:
                return None
            end = min(end, size - 1)
        else:
            end = size - 1
        if start >= size:
            raise RangeNotSatisfiable("Requested range not satisfiable", size)
        return start, end + 1
    if not last:
        return None
    suffix = int(last)
    if suffix == 0:
        raise RangeNotSatisfiable("Requested range not satisfiable", size)
    return max(size - suffix, 0), size


def _etag(cid_name: str) -> str:
    return f'"{cid_name}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


async def blob_response(
    store: DiskBlobStore,
    did: str,
    cid: CID | str,
    mime_type: str | None,
    range_header: str | None = None,
    *,
    if_range: str | None = None,
    if_none_match: str | None = None,
    head: bool = False,
    cache_control: str = BLOB_CACHE_CONTROL,
) -> Response:
    """The ``getBlob`` response for one blob, with single-range support.

    200 with the whole blob, 206 with ``Content-Range`` for a satisfiable single
    range, 416 (JSON error body, ``Content-Range: bytes */size``) for an
    unsatisfiable one, 304 when ``If-None-Match`` names the blob's ETag (the
    quoted CID). ``If-Range`` that does not match the ETag gets the whole blob.
    ``head`` leaves the body out. Raises :class:`BlobNotFound` if the account has
    no such blob. The account-status checks belong to the caller.
    """
    name = _cid_name(cid)
    etag = _etag(name)
    content_type = normalize_mime(mime_type) or _OCTET_STREAM
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": BLOB_CSP,
        "Content-Disposition": f'attachment; filename="{name}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": cache_control,
        "ETag": etag,
    }
    if _etag_matches(if_none_match, etag):
        if not await store.exists(did, name):
            raise BlobNotFound("Blob not found")
        return Response(status_code=304, headers=headers)

    reader = await store.open(did, name)
    size = reader.size
    if if_range is not None and if_range.strip() != etag:
        range_header = None
    try:
        byte_range = parse_range(range_header, size)
    except RangeNotSatisfiable as exc:
        reader.close()
        headers["Content-Range"] = f"bytes */{size}"
        return JSONResponse(
            {"error": "InvalidRequest", "message": exc.message}, status_code=416, headers=headers
        )

    headers["Content-Type"] = content_type
    if byte_range is None:
        start, end, status = 0, size, 200
    else:
        start, end = byte_range
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    if head or end == start:
        reader.close()
        return Response(status_code=status, headers=headers)
    return StreamingResponse(reader.iter_range(start, end), status_code=status, headers=headers)
