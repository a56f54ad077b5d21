"""pds.blobstore: uploads, lifecycle, path safety, MIME sniffing and HTTP serving."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pds.blobstore import (
    DEFAULT_MAX_BLOB_BYTES,
    BlobNotFound,
    DiskBlobStore,
    InvalidBlobKey,
    RangeNotSatisfiable,
    UploadedBlob,
    account_dirname,
    blob_response,
    mime_compatible,
    normalize_mime,
    parse_range,
    sniff_mime,
)
from roost.cid import CID
from roost.errors import CidError, InvalidDid, PayloadTooLarge, RoostError
from tests.servers import serve

ALICE = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
BOB = "did:web:bob.example.com%3A8080"


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def from_list(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture
def store(tmp_path: Path) -> DiskBlobStore:
    return DiskBlobStore(tmp_path / "blobs")


def temp_files(store: DiskBlobStore) -> list[str]:
    return sorted(os.listdir(store.tmp_dir))


async def put(store: DiskBlobStore, did: str, data: bytes, mime: str | None = None) -> UploadedBlob:
    blob = await store.upload(did, chunks(data), max_size=len(data) + 10, mime_hint=mime)
    await store.make_permanent(did, blob.temp_key, blob.cid)
    return blob


# -- upload -------------------------------------------------------------------


async def test_upload_hashes_streams_and_reports(store: DiskBlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several write batches
    blob = await store.upload(ALICE, chunks(data, 65536), max_size=DEFAULT_MAX_BLOB_BYTES)
    assert blob.cid == CID.for_raw(data)
    assert blob.cid.is_raw
    assert blob.size == len(data)
    assert blob.mime_type == "application/octet-stream"
    assert blob.temp_key.endswith("." + str(blob.cid))
    assert temp_files(store) == [blob.temp_key]
    assert (store.tmp_dir / blob.temp_key).read_bytes() == data
    assert await store.temp_exists(blob.temp_key)
    assert not await store.exists(ALICE, blob.cid)  # temporary blobs are not served


async def test_upload_size_limit_exact_passes_one_over_fails(store: DiskBlobStore) -> None:
    data = b"x" * 5000
    blob = await store.upload(ALICE, chunks(data, 999), max_size=5000)
    assert blob.size == 5000
    await store.delete_temp(blob.temp_key)
    with pytest.raises(PayloadTooLarge):
        await store.upload(ALICE, chunks(data + b"y", 999), max_size=5000)
    assert temp_files(store) == []


async def test_upload_limit_hit_mid_batch_leaves_nothing(store: DiskBlobStore) -> None:
    # two full write batches reach the disk before the limit is crossed
    big = b"z" * (2 * 1024 * 1024)
    with pytest.raises(PayloadTooLarge):
        await store.upload(ALICE, from_list([big, big]), max_size=3 * 1024 * 1024)
    assert temp_files(store) == []


async def test_empty_blob(store: DiskBlobStore) -> None:
    blob = await store.upload(ALICE, from_list([]), max_size=10)
    assert blob.size == 0
    assert blob.cid == CID.for_raw(b"")
    assert blob.mime_type == "application/octet-stream"
    await store.make_permanent(ALICE, blob.temp_key, blob.cid)
    assert await store.read(ALICE, blob.cid) == b""


async def test_failing_stream_removes_partial_file(store: DiskBlobStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * 2_000_000
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        await store.upload(ALICE, broken(), max_size=DEFAULT_MAX_BLOB_BYTES)
    assert temp_files(store) == []


async def test_cancelled_upload_removes_partial_file(store: DiskBlobStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"a" * 1_500_000
        started.set()
        await asyncio.sleep(30)
        yield b"never"

    task = asyncio.create_task(store.upload(ALICE, slow(), max_size=DEFAULT_MAX_BLOB_BYTES))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert temp_files(store) == []


async def test_memoryview_and_bytearray_chunks(store: DiskBlobStore) -> None:
    parts = [memoryview(b"hello "), bytearray(b"world"), b""]
    blob = await store.upload(ALICE, from_list(parts), max_size=100, mime_hint="text/plain")
    assert blob.cid == CID.for_raw(b"hello world")
    assert blob.mime_type == "text/plain"


# -- MIME ---------------------------------------------------------------------


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00" * 32


SNIFF_CASES = [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
    (b"GIF89a\x01\x00", "image/gif"),
    (b"GIF87a\x01\x00", "image/gif"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
    (ftyp(b"avif", b"avif", b"mif1"), "image/avif"),
    (ftyp(b"mif1", b"mif1", b"avif"), "image/avif"),
    (ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    (ftyp(b"mif1", b"mif1", b"heic"), "image/heic"),
    (ftyp(b"isom", b"isom", b"iso2", b"mp41"), "video/mp4"),
    (ftyp(b"mp42", b"mp42", b"isom"), "video/mp4"),
    (ftyp(b"qt  ", b"qt  "), "video/quicktime"),
    (ftyp(b"M4A ", b"M4A ", b"mp42"), "audio/mp4"),
    (ftyp(b"3gp5", b"3gp5"), "video/3gpp"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
    (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "video/x-matroska"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
    (b"\xff\xfb\x90\x64\x00", "audio/mpeg"),
    (b"\xff\xf1\x50\x80\x02", "audio/aac"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"OpusHead", "audio/ogg"),
    (b"fLaC\x00\x00\x00\x22", "audio/flac"),
    (b"%PDF-1.7\n", "application/pdf"),
    (b"PK\x03\x04\x14\x00", "application/zip"),
    (b"\x1f\x8b\x08\x00", "application/gzip"),
    (b"II*\x00\x08\x00", "image/tiff"),
    (b'{"hello": "world"}', "application/json"),
    (b'  [1, 2, 3]', "application/json"),
    (b"just some words\nand more\n", "text/plain"),
    ("caf\u00e9 \u2603\n".encode(), "text/plain"),
    (b"<!DOCTYPE html><html></html>", "text/html"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    (b"\x00\x01\x02\x03binary", None),
    (b"\xfe\xfe\xfe", None),
    (b"", None),
]


@pytest.mark.parametrize(("head", "expected"), SNIFF_CASES)
def test_sniff_table(head: bytes, expected: str | None) -> None:
    assert sniff_mime(head) == expected


def test_sniff_text_cut_inside_a_character() -> None:
    cut = ("x" * 10 + "\u00e9").encode()[:-1]
    assert sniff_mime(cut, complete=False) == "text/plain"
    assert sniff_mime(cut, complete=True) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("image/png", "image/png"),
        ("Image/PNG; charset=binary", "image/png"),
        ("application/vnd.ipld.car", "application/vnd.ipld.car"),
        ("image/svg+xml", "image/svg+xml"),
        ("*/*", None),
        ("image/*", None),
        ("", None),
        (None, None),
        ("png", None),
        ("image/png\r\nX-Evil: 1", None),
        ("a/" + "b" * 300, None),
    ],
)
def test_normalize_mime(raw: str | None, expected: str | None) -> None:
    assert normalize_mime(raw) == expected


def test_mime_compatibility() -> None:
    assert mime_compatible("image/jpg", "image/jpeg")
    assert mime_compatible("video/quicktime", "video/mp4")
    assert mime_compatible("application/octet-stream", "image/png")
    assert mime_compatible("text/csv", "text/plain")
    assert mime_compatible("text/plain", "application/json")
    assert not mime_compatible("image/png", "image/jpeg")
    assert not mime_compatible("image/png", "text/html")


async def test_upload_mime_policy(store: DiskBlobStore) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    # signature wins; the client's claim is kept and the mismatch reported
    blob = await store.upload(ALICE, chunks(png), max_size=1000, mime_hint="image/jpeg")
    assert (blob.mime_type, blob.sniffed_mime, blob.declared_mime) == (
        "image/png",
        "image/png",
        "image/jpeg",
    )
    assert blob.mime_mismatch
    # agreeing claim
    blob = await store.upload(ALICE, chunks(png), max_size=1000, mime_hint="image/png")
    assert blob.mime_type == "image/png" and not blob.mime_mismatch
    # unknown bytes: a valid hint is used, an invalid one is not
    raw = b"\x00\x01\x02\x03" * 10
    blob = await store.upload(ALICE, chunks(raw), max_size=1000, mime_hint="model/gltf-binary")
    assert blob.mime_type == "model/gltf-binary" and not blob.mime_mismatch
    blob = await store.upload(ALICE, chunks(raw), max_size=1000, mime_hint="*/*")
    assert blob.mime_type == "application/octet-stream" and blob.declared_mime is None
    # text: a more specific textual hint wins over the weak text sniff
    csv = b"a,b\n1,2\n"
    blob = await store.upload(ALICE, chunks(csv), max_size=1000, mime_hint="text/csv")
    assert blob.mime_type == "text/csv" and not blob.mime_mismatch
    blob = await store.upload(ALICE, chunks(csv), max_size=1000)
    assert blob.mime_type == "text/plain"
    # HTML claiming to be an image: stored as claimed, flagged
    html = b"<html><script>alert(1)</script></html>"
    blob = await store.upload(ALICE, chunks(html), max_size=1000, mime_hint="image/png")
    assert blob.sniffed_mime == "text/html" and blob.mime_mismatch


# -- lifecycle ----------------------------------------------------------------


async def test_temp_to_permanent_and_idempotent(store: DiskBlobStore) -> None:
    data = b"permanent bytes"
    blob = await store.upload(ALICE, chunks(data), max_size=100)
    await store.make_permanent(ALICE, blob.temp_key, blob.cid)
    assert await store.exists(ALICE, blob.cid)
    assert await store.size(ALICE, blob.cid) == len(data)
    assert await store.read(ALICE, blob.cid) == data
    assert temp_files(store) == []
    # again: nothing to move, already there
    await store.make_permanent(ALICE, blob.temp_key, str(blob.cid))
    # a second upload of the same bytes collapses into the same file
    again = await store.upload(ALICE, chunks(data), max_size=100)
    assert again.cid == blob.cid and again.temp_key != blob.temp_key
    await store.make_permanent(ALICE, again.temp_key, again.cid)
    assert temp_files(store) == []
    assert await store.list_cids(ALICE) == [str(blob.cid)]
    assert await store.usage(ALICE) == len(data)


async def test_make_permanent_checks_key_and_presence(store: DiskBlobStore) -> None:
    a = await store.upload(ALICE, chunks(b"aaa"), max_size=10)
    b = await store.upload(ALICE, chunks(b"bbb"), max_size=10)
    with pytest.raises(InvalidBlobKey):
        await store.make_permanent(ALICE, a.temp_key, b.cid)
    await store.delete_temp(a.temp_key)
    assert not await store.delete_temp(a.temp_key)
    with pytest.raises(BlobNotFound) as info:
        await store.make_permanent(ALICE, a.temp_key, a.cid)
    assert info.value.error == "BlobNotFound"


async def test_two_accounts_same_bytes_are_independent(store: DiskBlobStore) -> None:
    data = b"shared picture"
    a = await put(store, ALICE, data)
    b = await put(store, BOB, data)
    assert a.cid == b.cid
    assert await store.delete(ALICE, a.cid)
    assert not await store.exists(ALICE, a.cid)
    assert await store.exists(BOB, b.cid)
    assert await store.read(BOB, b.cid) == data
    assert not await store.delete(ALICE, a.cid)
    with pytest.raises(BlobNotFound):
        await store.size(ALICE, a.cid)


async def test_usage_and_delete_account(store: DiskBlobStore) -> None:
    await put(store, ALICE, b"1" * 100)
    await put(store, ALICE, b"2" * 250)
    await put(store, BOB, b"3" * 7)
    assert await store.usage(ALICE) == 350
    assert await store.usage(BOB) == 7
    assert await store.usage("did:plc:nobodyhere") == 0
    await store.delete_account(ALICE)
    await store.delete_account(ALICE)  # idempotent
    assert await store.usage(ALICE) == 0
    assert await store.list_cids(ALICE) == []
    assert await store.usage(BOB) == 7
    assert os.listdir(store.trash_dir) == []


async def test_cleanup_temp_by_age(tmp_path: Path) -> None:
    now = [time.time()]
    store = DiskBlobStore(tmp_path / "blobs", clock=lambda: now[0])
    old = await store.upload(ALICE, chunks(b"old"), max_size=10)
    fresh = await store.upload(ALICE, chunks(b"fresh"), max_size=10)
    partial = store.tmp_dir / ("0" * 32 + ".part")  # left by a crash mid-upload
    partial.write_bytes(b"half")
    stray = store.tmp_dir / "not-ours"
    stray.write_bytes(b"?")
    hours_ago = now[0] - 7 * 3600
    os.utime(store.tmp_dir / old.temp_key, (hours_ago, hours_ago))
    os.utime(partial, (hours_ago, hours_ago))
    assert await store.cleanup_temp() == 2
    assert temp_files(store) == sorted([fresh.temp_key, "not-ours"])
    # the clock moves on: the fresh one ages out too
    now[0] += 3600
    assert await store.cleanup_temp(older_than_s=1800) == 1
    assert temp_files(store) == ["not-ours"]


async def test_open_range(store: DiskBlobStore) -> None:
    data = bytes(range(256)) * 1000
    blob = await put(store, ALICE, data)
    got = b"".join([c async for c in store.open_range(ALICE, blob.cid, 1000, 200_000)])
    assert got == data[1000:200_000]
    reader = await store.open(ALICE, blob.cid)
    assert reader.size == len(data)
    reader.close()
    with pytest.raises(BlobNotFound):
        await store.open(ALICE, CID.for_raw(b"missing"))


# -- path safety --------------------------------------------------------------


@pytest.mark.parametrize(
    "did",
    [
        "../../etc",
        "did:plc:../../x",
        "did:web:a/b",
        "did:plc:abc\x00",
        "",
        "did:web:a%",
        "DID:plc:x",
    ],
)
async def test_malicious_dids_rejected(store: DiskBlobStore, did: str) -> None:
    cid = CID.for_raw(b"x")
    with pytest.raises(InvalidDid):
        await store.exists(did, cid)
    with pytest.raises(InvalidDid):
        await store.upload(did, chunks(b"x"), max_size=10)
    with pytest.raises(InvalidDid):
        await store.delete_account(did)


@pytest.mark.parametrize("cid", ["../x", "bafk/../..", "BAFKREI", "", "b" + "a" * 10, "zQm"])
async def test_malicious_cids_rejected(store: DiskBlobStore, cid: str) -> None:
    with pytest.raises(CidError):
        await store.exists(ALICE, cid)
    with pytest.raises(CidError):
        await store.delete(ALICE, cid)


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "0" * 32, "0" * 32 + ".part", "x" * 32 + "." + "b" * 59, ""]
)
async def test_malicious_temp_keys_rejected(store: DiskBlobStore, key: str) -> None:
    with pytest.raises(InvalidBlobKey):
        await store.delete_temp(key)
    with pytest.raises(InvalidBlobKey):
        await store.make_permanent(ALICE, key, CID.for_raw(b"x"))


def test_account_dirnames_are_safe_and_distinct() -> None:
    dids = [
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        "did:web:example.com",
        "did:web:Example.com",
        "did:web:example.com%3A8080",
        "did:web:example.com:8080",
        "did:web:..",
        "did:web:a_3ab",
        "did:web:a:b",
        "did:web:" + "a" * 1000,
        "did:web:" + "a" * 1001,
    ]
    names = [account_dirname(d) for d in dids]
    assert len(set(names)) == len(names)
    assert account_dirname("did:plc:abc") == "did_3aplc_3aabc"
    for name in names:
        assert name not in (".", "..")
        assert len(name) <= 200
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-_")


async def test_paths_stay_inside_root(store: DiskBlobStore) -> None:
    await put(store, "did:web:..", b"dots")
    await put(store, "did:web:%2e%2e", b"encoded dots")
    root = store.root.resolve()
    for dirpath, _, files in os.walk(store.root):
        for f in files:
            assert (Path(dirpath) / f).resolve().is_relative_to(root)
    assert sorted(os.listdir(store.accounts_dir)) == sorted(
        [account_dirname("did:web:.."), account_dirname("did:web:%2e%2e")]
    )


# -- Range parsing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=10-", 100, (10, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-1000", 100, (0, 100)),
        ("bytes=90-1000", 100, (90, 100)),
        ("bytes=99-99", 100, (99, 100)),
        ("bytes= 5 - 6 ", 100, (5, 7)),
        ("bytes=9-5", 100, None),  # inverted: ignored
        ("bytes=0-1,5-6", 100, None),  # several ranges: whole blob
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=abc", 100, None),
        ("bytes=0-0", 0, None),  # empty blob: whole (empty) body
        ("bytes=" + "9" * 300, 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=" + "9" * 30 + "-"]
)
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


# -- HTTP serving -------------------------------------------------------------


def blob_app(store: DiskBlobStore, mime_types: dict[str, str]) -> Starlette:
    async def get_blob(request: Request) -> Response:
        did = request.query_params["did"]
        cid = request.query_params["cid"]
        try:
            return await blob_response(
                store,
                did,
                cid,
                mime_types.get(cid),
                request.headers.get("range"),
                if_range=request.headers.get("if-range"),
                if_none_match=request.headers.get("if-none-match"),
                head=request.method == "HEAD",
            )
        except RoostError as exc:
            return JSONResponse({"error": exc.error, "message": exc.message}, exc.status)

    return Starlette(routes=[Route("/blob", get_blob, methods=["GET", "HEAD"])])


@pytest.fixture
def served(store: DiskBlobStore) -> Iterator[tuple[str, str, bytes]]:
    data = os.urandom(300_000)
    blob = asyncio.run(put(store, ALICE, data))
    with serve(blob_app(store, {str(blob.cid): "image/png"})) as url:
        yield f"{url}/blob?did={ALICE}&cid={blob.cid}", str(blob.cid), data


def test_http_full_body_and_headers(served: tuple[str, str, bytes]) -> None:
    url, cid, data = served
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.content == data
    h = r.headers
    assert h["content-type"] == "image/png"
    assert h["content-length"] == str(len(data))
    assert h["x-content-type-options"] == "nosniff"
    assert h["content-security-policy"] == "default-src 'none'; sandbox"
    assert h["content-disposition"] == f'attachment; filename="{cid}"'
    assert h["accept-ranges"] == "bytes"
    assert h["etag"] == f'"{cid}"'
    assert "max-age" in h["cache-control"]


def test_http_ranges(served: tuple[str, str, bytes]) -> None:
    url, _, data = served
    size = len(data)
    r = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{size}"
    assert r.headers["content-length"] == "100"
    assert r.headers["content-type"] == "image/png"

    r = httpx.get(url, headers={"Range": "bytes=-500"})
    assert r.status_code == 206
    assert r.content == data[-500:]
    assert r.headers["content-range"] == f"bytes {size - 500}-{size - 1}/{size}"

    r = httpx.get(url, headers={"Range": "bytes=299000-"})
    assert r.status_code == 206 and r.content == data[299000:]

    r = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"
    assert r.json()["error"] == "InvalidRequest"

    r = httpx.get(url, headers={"Range": "bytes=0-1,5-9"})
    assert r.status_code == 200 and r.content == data

    r = httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": '"someone-else"'})
    assert r.status_code == 200 and r.content == data


def test_http_conditional_and_head(served: tuple[str, str, bytes]) -> None:
    url, cid, data = served
    r = httpx.get(url, headers={"If-None-Match": f'"{cid}"'})
    assert r.status_code == 304 and r.content == b""
    r = httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": f'"{cid}"'})
    assert r.status_code == 206 and r.content == data[:10]
    r = httpx.head(url)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    assert r.content == b""


def test_http_missing_blob_and_bad_mime(store: DiskBlobStore) -> None:
    blob = asyncio.run(put(store, ALICE, b"<html>hi</html>"))
    app = blob_app(store, {str(blob.cid): "text/html\r\nSet-Cookie: x=1"})
    with serve(app) as url:
        r = httpx.get(f"{url}/blob?did={BOB}&cid={blob.cid}")
        assert r.status_code == 400 and r.json()["error"] == "BlobNotFound"
        r = httpx.get(f"{url}/blob?did={ALICE}&cid={blob.cid}")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert "set-cookie" not in r.headers
        r = httpx.get(f"{url}/blob?did={ALICE}&cid=../../etc/passwd")
        assert r.status_code == 400
