"""The `atproto` Python SDK posts images to a roost PDS and fetches them back, unchanged."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

atproto = pytest.importorskip("atproto")

from atproto import Client, models  # noqa: E402
from atproto_client.exceptions import BadRequestError  # noqa: E402

from roost.cid import CID  # noqa: E402
from tests.pds.conftest import PASSWORD, Network, running_network  # noqa: E402

# the SDK hands httpx its upload as ``data=<bytes>``, which httpx deprecates
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid 8-bit RGB PNG built by hand: signature, IHDR, one IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    scanlines = b"".join(
        b"\x00" + bytes((17 * x + 91 * y) % 256 for x in range(width * 3)) for y in range(height)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with running_network(tmp_path) as network:
        yield network


@pytest.fixture
def client(net: Network) -> Iterator[tuple[Client, str]]:
    did = net.create_account("alice")["did"]
    sdk = Client(base_url=f"{net.pds_url}/xrpc")
    # no AppView in this network: skip the login's app.bsky profile lookup
    sdk.login("alice.pds.test", PASSWORD, fetch_bsky_profile=False)
    try:
        yield sdk, did
    finally:
        sdk.request.close()


def test_sdk_send_image_and_get_blob(net: Network, client: tuple[Client, str]) -> None:
    sdk, did = client
    image = tiny_png()
    post = sdk.send_image("a tiny picture", image, "three by two pixels", profile_identify=did)

    record: Any = sdk.com.atproto.repo.get_record(
        models.ComAtprotoRepoGetRecord.Params(
            repo=did, collection="app.bsky.feed.post", rkey=post.uri.rsplit("/", 1)[1]
        )
    )
    embedded = record.value.embed.images[0]
    assert embedded.alt == "three by two pixels"
    cid = embedded.image.ref.link
    assert cid == str(CID.for_raw(image))
    assert embedded.image.mime_type == "image/png"
    assert embedded.image.size == len(image)

    fetched = sdk.com.atproto.sync.get_blob(models.ComAtprotoSyncGetBlob.Params(did=did, cid=cid))
    assert fetched == image
    listed = sdk.com.atproto.sync.list_blobs(models.ComAtprotoSyncListBlobs.Params(did=did))
    assert listed.cids == [cid]


def test_sdk_upload_blob_then_post_with_images_embed(
    net: Network, client: tuple[Client, str]
) -> None:
    sdk, did = client
    first, second = tiny_png(2, 2), tiny_png(4, 1)
    blobs = [sdk.upload_blob(first).blob, sdk.upload_blob(second).blob]
    # an upload alone is not served yet
    with pytest.raises(BadRequestError) as refused:
        sdk.com.atproto.sync.get_blob(
            models.ComAtprotoSyncGetBlob.Params(did=did, cid=blobs[0].ref.link)
        )
    assert refused.value.response.content.error == "BlobNotFound"
    embed = models.AppBskyEmbedImages.Main(
        images=[
            models.AppBskyEmbedImages.Image(alt=f"image {i}", image=blob)
            for i, blob in enumerate(blobs)
        ]
    )
    post = sdk.send_post("two tiny pictures", embed=embed, profile_identify=did)
    for blob, data in zip(blobs, (first, second)):
        got = sdk.com.atproto.sync.get_blob(
            models.ComAtprotoSyncGetBlob.Params(did=did, cid=blob.ref.link)
        )
        assert got == data

    sdk.delete_post(post.uri)
    with pytest.raises(BadRequestError):
        sdk.com.atproto.sync.get_blob(
            models.ComAtprotoSyncGetBlob.Params(did=did, cid=blobs[0].ref.link)
        )
