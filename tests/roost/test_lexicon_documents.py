"""The lexicon documents roost ships: all valid, all refs resolve, the needed ones
present, and realistic records pass (and broken ones fail at the right path)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from roost.cbor import from_json, to_json
from roost.cid import CID
from roost.errors import LexiconError, ValidationError
from roost.lexicon import _DATA_TYPES, Catalog, default_lexicon_dir

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
OTHER_DID = "did:plc:44ybard66vv44zksje25o7dz"
BLOB_CID = "bafkreibjfgx2gprinfvicegelk5kosd6y2frmqpqzwqkg7usac74l3t2v4"
CBOR_CID = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
POST_URI = f"at://{DID}/app.bsky.feed.post/3l3qo2vuowo2b"
NOW = "2024-11-21T12:34:56.789Z"

REQUIRED_NSIDS = [
    # com.atproto.server.*
    *(
        f"com.atproto.server.{n}"
        for n in [
            "activateAccount",
            "checkAccountStatus",
            "confirmEmail",
            "createAccount",
            "createAppPassword",
            "createInviteCode",
            "createInviteCodes",
            "createSession",
            "deactivateAccount",
            "defs",
            "deleteAccount",
            "deleteSession",
            "describeServer",
            "getAccountInviteCodes",
            "getServiceAuth",
            "getSession",
            "listAppPasswords",
            "refreshSession",
            "requestAccountDelete",
            "requestEmailConfirmation",
            "requestEmailUpdate",
            "requestPasswordReset",
            "reserveSigningKey",
            "resetPassword",
            "revokeAppPassword",
            "updateEmail",
        ]
    ),
    # com.atproto.repo.*
    *(
        f"com.atproto.repo.{n}"
        for n in [
            "applyWrites",
            "createRecord",
            "defs",
            "deleteRecord",
            "describeRepo",
            "getRecord",
            "importRepo",
            "listMissingBlobs",
            "listRecords",
            "putRecord",
            "strongRef",
            "uploadBlob",
        ]
    ),
    # com.atproto.sync.*
    *(
        f"com.atproto.sync.{n}"
        for n in [
            "defs",
            "getBlob",
            "getBlocks",
            "getCheckout",
            "getHead",
            "getHostStatus",
            "getLatestCommit",
            "getRecord",
            "getRepo",
            "getRepoStatus",
            "listBlobs",
            "listHosts",
            "listRepos",
            "listReposByCollection",
            "notifyOfUpdate",
            "requestCrawl",
            "subscribeRepos",
        ]
    ),
    # com.atproto.identity.*
    *(
        f"com.atproto.identity.{n}"
        for n in [
            "defs",
            "getRecommendedDidCredentials",
            "refreshIdentity",
            "requestPlcOperationSignature",
            "resolveDid",
            "resolveHandle",
            "resolveIdentity",
            "signPlcOperation",
            "submitPlcOperation",
            "updateHandle",
        ]
    ),
    # com.atproto.admin.* (what a PDS serves)
    *(
        f"com.atproto.admin.{n}"
        for n in [
            "defs",
            "deleteAccount",
            "disableAccountInvites",
            "disableInviteCodes",
            "enableAccountInvites",
            "getAccountInfo",
            "getAccountInfos",
            "getInviteCodes",
            "getSubjectStatus",
            "searchAccounts",
            "sendEmail",
            "updateAccountEmail",
            "updateAccountHandle",
            "updateAccountPassword",
            "updateAccountSigningKey",
            "updateSubjectStatus",
        ]
    ),
    "com.atproto.label.defs",
    "com.atproto.moderation.defs",
    "com.atproto.moderation.createReport",
    # app.bsky.*
    "app.bsky.actor.profile",
    "app.bsky.actor.defs",
    "app.bsky.actor.getPreferences",
    "app.bsky.actor.putPreferences",
    *(
        f"app.bsky.feed.{n}"
        for n in [
            "post",
            "like",
            "repost",
            "generator",
            "threadgate",
            "postgate",
            "defs",
            "getFeedSkeleton",
            "describeFeedGenerator",
            "sendInteractions",
            "getFeed",
        ]
    ),
    *(f"app.bsky.graph.{n}" for n in ["follow", "block", "list", "listitem", "defs"]),
    *(
        f"app.bsky.embed.{n}"
        for n in ["images", "external", "record", "recordWithMedia", "video", "defs"]
    ),
    "app.bsky.richtext.facet",
]

RECORD_KEYS = {
    "app.bsky.feed.post": "tid",
    "app.bsky.feed.like": "tid",
    "app.bsky.feed.repost": "tid",
    "app.bsky.graph.follow": "tid",
    "app.bsky.graph.block": "tid",
    "app.bsky.graph.list": "tid",
    "app.bsky.graph.listitem": "tid",
    "app.bsky.feed.generator": "any",
    "app.bsky.feed.threadgate": "tid",
    "app.bsky.feed.postgate": "tid",
    "app.bsky.actor.profile": "literal:self",
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def image_blob(mime: str = "image/jpeg", size: int = 123_456) -> dict[str, Any]:
    return {"$type": "blob", "ref": CID.from_str(BLOB_CID), "mimeType": mime, "size": size}


def post() -> dict[str, Any]:
    return {
        "$type": "app.bsky.feed.post",
        "text": "Hello @alice.bsky.social, see https://example.com/page #atproto 🦋",
        "createdAt": NOW,
        "langs": ["en", "pt-BR"],
        "facets": [
            {
                "index": {"byteStart": 6, "byteEnd": 24},
                "features": [{"$type": "app.bsky.richtext.facet#mention", "did": DID}],
            },
            {
                "index": {"byteStart": 30, "byteEnd": 54},
                "features": [
                    {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com/page"}
                ],
            },
            {
                "index": {"byteStart": 55, "byteEnd": 63},
                "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "atproto"}],
            },
        ],
        "embed": {
            "$type": "app.bsky.embed.images",
            "images": [
                {
                    "alt": "a butterfly",
                    "image": image_blob(),
                    "aspectRatio": {"width": 1200, "height": 800},
                },
                {"alt": "", "image": image_blob("image/png", 2_000_000)},
            ],
        },
        "reply": {
            "root": {"uri": POST_URI, "cid": CBOR_CID},
            "parent": {"uri": POST_URI, "cid": CBOR_CID},
        },
        "labels": {"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "nudity"}]},
        "tags": ["butterflies"],
    }


def profile() -> dict[str, Any]:
    return {
        "$type": "app.bsky.actor.profile",
        "displayName": "Alice 🦋",
        "description": "I post about butterflies.",
        "avatar": image_blob("image/png", 500_000),
        "banner": image_blob("image/jpeg", 900_000),
        "pinnedPost": {"uri": POST_URI, "cid": CBOR_CID},
        "createdAt": NOW,
    }


def follow() -> dict[str, Any]:
    return {"$type": "app.bsky.graph.follow", "subject": OTHER_DID, "createdAt": NOW}


def like() -> dict[str, Any]:
    return {
        "$type": "app.bsky.feed.like",
        "subject": {"uri": POST_URI, "cid": CBOR_CID},
        "createdAt": NOW,
    }


# -- the documents themselves -------------------------------------------------------


def test_every_document_loads(catalog: Catalog) -> None:
    files = sorted(default_lexicon_dir().rglob("*.json"))
    assert len(catalog) == len(files) >= len(REQUIRED_NSIDS)


def test_files_are_laid_out_by_nsid() -> None:
    root = default_lexicon_dir()
    for path in root.rglob("*.json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        expected = root.joinpath(*document["id"].split(".")).with_suffix(".json")
        assert path == expected


def test_every_ref_resolves(catalog: Catalog) -> None:
    assert catalog.unresolved_refs() == []


@pytest.mark.parametrize("nsid", REQUIRED_NSIDS)
def test_required_document_present(catalog: Catalog, nsid: str) -> None:
    assert catalog.get(nsid) is not None


def test_every_definition_compiles(catalog: Catalog) -> None:
    """Compiling a definition binds all its refs; no LexiconError may come out."""
    for nsid in catalog:
        document = catalog.get(nsid)
        assert document is not None
        for name, schema in document["defs"].items():
            if schema["type"] in _DATA_TYPES:
                try:
                    catalog.validate(f"{nsid}#{name}", None)
                except ValidationError:
                    pass
        if catalog.method(nsid) is not None:
            try:
                catalog.validate_params(nsid, {})
            except ValidationError:
                pass


@pytest.mark.parametrize(("collection", "key"), sorted(RECORD_KEYS.items()))
def test_record_key_types(catalog: Catalog, collection: str, key: str) -> None:
    assert catalog.record_key_type(collection) == key


def test_known_schema_facts(catalog: Catalog) -> None:
    text = catalog.get("app.bsky.feed.post")["defs"]["main"]["record"]["properties"]["text"]  # type: ignore[index]
    assert (text["maxGraphemes"], text["maxLength"]) == (300, 3000)
    embed = catalog.get("app.bsky.feed.post")["defs"]["main"]["record"]["properties"]["embed"]  # type: ignore[index]
    assert set(embed["refs"]) >= {
        "app.bsky.embed.images",
        "app.bsky.embed.video",
        "app.bsky.embed.external",
        "app.bsky.embed.record",
        "app.bsky.embed.recordWithMedia",
    }
    create = catalog.method("com.atproto.repo.createRecord")
    assert create is not None and create.errors == ("InvalidSwap",)
    account = catalog.method("com.atproto.server.createAccount")
    assert account is not None and {
        "InvalidHandle",
        "InvalidPassword",
        "InvalidInviteCode",
        "HandleNotAvailable",
        "UnsupportedDomain",
        "UnresolvableDid",
        "IncompatibleDidDoc",
    } <= set(account.errors)
    list_records = catalog.method("com.atproto.repo.listRecords")
    assert list_records is not None and list_records.parameters is not None
    limit = list_records.parameters["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 50)
    subscribe = catalog.method("com.atproto.sync.subscribeRepos")
    assert subscribe is not None and subscribe.type == "subscription"
    assert subscribe.message_schema is not None
    assert subscribe.message_schema["refs"] == [
        "#commit",
        "#sync",
        "#identity",
        "#account",
        "#info",
    ]
    assert set(subscribe.errors) == {"FutureCursor", "ConsumerTooSlow"}
    skeleton = catalog.method("app.bsky.feed.getFeedSkeleton")
    assert skeleton is not None and skeleton.errors == ("UnknownFeed",)
    assert catalog.method("com.atproto.repo.uploadBlob").input_encoding == "*/*"  # type: ignore[union-attr]
    assert catalog.method("com.atproto.sync.getRepo").output_encoding == "application/vnd.ipld.car"  # type: ignore[union-attr]


# -- realistic records ---------------------------------------------------------------


@pytest.mark.parametrize("make", [post, profile, follow, like], ids=lambda f: f.__name__)
@pytest.mark.parametrize("form", ["data-model", "json"])
def test_realistic_records_validate(catalog: Catalog, make: Any, form: str) -> None:
    record = make()
    if form == "json":
        record = to_json(record)
        assert from_json(record) == make()
    catalog.validate_record(record["$type"], record)


def _broken(make: Any, change: Any) -> dict[str, Any]:
    record = make()
    change(record)
    return record  # type: ignore[no-any-return]


BROKEN = [
    ("post-no-text", post, lambda r: r.pop("text"), "record"),
    ("post-text-too-long", post, lambda r: r.update(text="🦋" * 301), "record/text"),
    # 121 graphemes (under 300) but 3025 UTF-8 bytes (over 3000)
    ("post-text-too-many-bytes", post, lambda r: r.update(text="👩‍👩‍👦‍👦" * 121), "record/text"),
    ("post-bad-date", post, lambda r: r.update(createdAt="2024-11-21"), "record/createdAt"),
    (
        "post-too-many-langs",
        post,
        lambda r: r.update(langs=["en", "de", "fr", "es"]),
        "record/langs",
    ),
    ("post-bad-lang", post, lambda r: r["langs"].append("???"), "record/langs/2"),
    (
        "post-negative-byte-start",
        post,
        lambda r: r["facets"][0]["index"].update(byteStart=-1),
        "record/facets/0/index/byteStart",
    ),
    (
        "post-mention-not-did",
        post,
        lambda r: r["facets"][0]["features"][0].update(did="alice"),
        "record/facets/0/features/0/did",
    ),
    (
        "post-link-not-uri",
        post,
        lambda r: r["facets"][1]["features"][0].update(uri="example"),
        "record/facets/1/features/0/uri",
    ),
    ("post-facet-no-index", post, lambda r: r["facets"][2].pop("index"), "record/facets/2"),
    (
        "post-too-many-images",
        post,
        lambda r: r["embed"]["images"].extend([r["embed"]["images"][0]] * 3),
        "record/embed/images",
    ),
    (
        "post-image-too-big",
        post,
        lambda r: r["embed"]["images"][1]["image"].update(size=2_000_001),
        "record/embed/images/1/image",
    ),
    (
        "post-image-not-image",
        post,
        lambda r: r["embed"]["images"][0]["image"].update(mimeType="video/mp4"),
        "record/embed/images/0/image",
    ),
    (
        "post-image-no-alt",
        post,
        lambda r: r["embed"]["images"][0].pop("alt"),
        "record/embed/images/0",
    ),
    (
        "post-aspect-zero",
        post,
        lambda r: r["embed"]["images"][0]["aspectRatio"].update(width=0),
        "record/embed/images/0/aspectRatio/width",
    ),
    ("post-embed-no-type", post, lambda r: r["embed"].pop("$type"), "record/embed"),
    (
        "post-reply-bad-cid",
        post,
        lambda r: r["reply"]["parent"].update(cid="nope"),
        "record/reply/parent/cid",
    ),
    ("post-reply-no-parent", post, lambda r: r["reply"].pop("parent"), "record/reply"),
    (
        "post-label-too-long",
        post,
        lambda r: r["labels"]["values"][0].update(val="x" * 129),
        "record/labels/values/0/val",
    ),
    ("post-too-many-tags", post, lambda r: r.update(tags=["t"] * 9), "record/tags"),
    (
        "profile-name-too-long",
        profile,
        lambda r: r.update(displayName="x" * 65),
        "record/displayName",
    ),
    (
        "profile-avatar-gif",
        profile,
        lambda r: r["avatar"].update(mimeType="image/gif"),
        "record/avatar",
    ),
    (
        "profile-banner-too-big",
        profile,
        lambda r: r["banner"].update(size=1_000_001),
        "record/banner",
    ),
    (
        "profile-pinned-not-ref",
        profile,
        lambda r: r.update(pinnedPost=POST_URI),
        "record/pinnedPost",
    ),
    (
        "follow-subject-handle",
        follow,
        lambda r: r.update(subject="alice.bsky.social"),
        "record/subject",
    ),
    ("follow-no-created-at", follow, lambda r: r.pop("createdAt"), "record"),
    ("like-subject-no-cid", like, lambda r: r["subject"].pop("cid"), "record/subject"),
    (
        "like-subject-bad-uri",
        like,
        lambda r: r["subject"].update(uri="https://x"),
        "record/subject/uri",
    ),
    ("like-null-subject", like, lambda r: r.update(subject=None), "record/subject"),
]


@pytest.mark.parametrize(
    ("make", "change", "path"), [pytest.param(*c[1:], id=c[0]) for c in BROKEN]
)
@pytest.mark.parametrize("form", ["data-model", "json"])
def test_broken_records_fail_at_the_right_path(
    catalog: Catalog, make: Any, change: Any, path: str, form: str
) -> None:
    record = _broken(make, change)
    if form == "json":
        record = to_json(record)
    with pytest.raises(ValidationError) as info:
        catalog.validate_record(record["$type"], record)
    assert info.value.path == path, str(info.value)


def test_other_embeds(catalog: Catalog) -> None:
    base = {"$type": "app.bsky.feed.post", "text": "", "createdAt": NOW}
    quote = {"$type": "app.bsky.embed.record", "record": {"uri": POST_URI, "cid": CBOR_CID}}
    external = {
        "$type": "app.bsky.embed.external",
        "external": {
            "uri": "https://example.com",
            "title": "Example",
            "description": "",
            "thumb": image_blob(),
        },
    }
    video = {
        "$type": "app.bsky.embed.video",
        "video": image_blob("video/mp4", 50_000_000),
        "aspectRatio": {"width": 16, "height": 9},
    }
    with_media = {"$type": "app.bsky.embed.recordWithMedia", "record": quote, "media": video}
    for embed in (quote, external, video, with_media):
        catalog.validate_record("app.bsky.feed.post", {**base, "embed": embed})
    # an embed type the union does not list is accepted (open union)
    catalog.validate_record(
        "app.bsky.feed.post", {**base, "embed": {"$type": "com.example.embed", "x": 1}}
    )
    bad = {**with_media, "media": {**video, "video": image_blob("image/png")}}
    with pytest.raises(ValidationError) as info:
        catalog.validate_record("app.bsky.feed.post", {**base, "embed": bad})
    assert info.value.path == "record/embed/media/video"


def test_generator_and_graph_records(catalog: Catalog) -> None:
    catalog.validate_record(
        "app.bsky.feed.generator",
        {
            "$type": "app.bsky.feed.generator",
            "did": "did:web:feeds.example.com",
            "displayName": "Cats",
            "description": "Only cats",
            "createdAt": NOW,
            "contentMode": "app.bsky.feed.defs#contentModeVideo",
        },
    )
    catalog.validate_record(
        "app.bsky.graph.list",
        {
            "$type": "app.bsky.graph.list",
            "purpose": "app.bsky.graph.defs#curatelist",
            "name": "Friends",
            "createdAt": NOW,
        },
    )
    catalog.validate_record(
        "app.bsky.graph.listitem",
        {
            "$type": "app.bsky.graph.listitem",
            "subject": OTHER_DID,
            "list": f"at://{DID}/app.bsky.graph.list/3l3qo2vuowo2b",
            "createdAt": NOW,
        },
    )
    catalog.validate_record(
        "app.bsky.feed.threadgate",
        {
            "$type": "app.bsky.feed.threadgate",
            "post": POST_URI,
            "createdAt": NOW,
            "allow": [
                {"$type": "app.bsky.feed.threadgate#mentionRule"},
                {"$type": "app.bsky.feed.threadgate#followingRule"},
            ],
        },
    )
    with pytest.raises(ValidationError) as info:
        catalog.validate_record(
            "app.bsky.graph.list",
            {
                "$type": "app.bsky.graph.list",
                "purpose": "app.bsky.graph.defs#curatelist",
                "name": "",
                "createdAt": NOW,
            },
        )
    assert info.value.path == "record/name"


def test_preferences_round_trip(catalog: Catalog) -> None:
    body = {
        "preferences": [
            {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False},
            {
                "$type": "app.bsky.actor.defs#savedFeedsPrefV2",
                "items": [
                    {
                        "id": "3l3qo2vuowo2b",
                        "type": "timeline",
                        "value": "following",
                        "pinned": True,
                    }
                ],
            },
            {"$type": "com.example.somethingElse", "anything": [1, 2, 3]},
        ]
    }
    catalog.validate_input("app.bsky.actor.putPreferences", body)
    catalog.validate_output("app.bsky.actor.getPreferences", body)
    with pytest.raises(ValidationError) as info:
        catalog.validate_input(
            "app.bsky.actor.putPreferences",
            {"preferences": [{"$type": "app.bsky.actor.defs#adultContentPref"}]},
        )
    assert info.value.path == "input/preferences/0"


def test_feed_skeleton(catalog: Catalog) -> None:
    nsid = "app.bsky.feed.getFeedSkeleton"
    feed_uri = f"at://{DID}/app.bsky.feed.generator/cats"
    assert catalog.validate_params(nsid, {"feed": feed_uri}) == {"feed": feed_uri, "limit": 50}
    with pytest.raises(ValidationError) as info:
        catalog.validate_params(nsid, {"feed": "cats"})
    assert info.value.path == "params/feed"
    catalog.validate_output(
        nsid,
        {
            "cursor": "x",
            "feed": [
                {"post": POST_URI},
                {
                    "post": POST_URI,
                    "reason": {
                        "$type": "app.bsky.feed.defs#skeletonReasonRepost",
                        "repost": POST_URI,
                    },
                },
                {"post": POST_URI, "reason": {"$type": "app.bsky.feed.defs#skeletonReasonPin"}},
            ],
        },
    )
    with pytest.raises(ValidationError) as info:
        catalog.validate_output(nsid, {"feed": [{"post": "x"}]})
    assert info.value.path == "output/feed/0/post"


def test_no_dangling_lexicon_errors_on_shipped_methods(catalog: Catalog) -> None:
    for nsid in catalog:
        m = catalog.method(nsid)
        if m is None or m.type == "subscription":
            continue
        for fn in (catalog.validate_input, catalog.validate_output):
            try:
                fn(nsid, {})
            except ValidationError:
                pass
            except LexiconError as exc:  # pragma: no cover - would be a broken document
                pytest.fail(f"{nsid}: {exc}")
