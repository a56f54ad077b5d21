"""The feed generator's HTTP face on a real server: skeletons, describe, did.json, auth, limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from feedgen.algos import register_builtins
from feedgen.app import create_app
from feedgen.config import FeedgenConfig
from feedgen.plugins import Feed, FeedPage, FeedRequest, Registry, algorithm
from feedgen.sqlite import SqliteIndex
from roost.crypto import PrivateKey, PublicKey
from roost.errors import DidNotFound
from roost.jwt import create_service_jwt
from tests.feedgen.helpers import follow, post, store
from tests.servers import ServerThread, free_port

A, B, VIEWER = "did:plc:aaa", "did:plc:bbb", "did:plc:viewer"
PUB = "did:plc:publisher"
SKELETON = "app.bsky.feed.getFeedSkeleton"
gate = threading.Event()


@algorithm()
def slow(index: Any, request: FeedRequest) -> FeedPage:
    gate.wait(20)
    return FeedPage([])


@algorithm(anonymous=True)
def broken(index: Any, request: FeedRequest) -> FeedPage:
    return FeedPage(["not a uri"])


@dataclass
class Service:
    url: str
    did: str
    keys: dict[str, PrivateKey]
    http: httpx.Client

    def uri(self, rkey: str) -> str:
        return f"at://{PUB}/app.bsky.feed.generator/{rkey}"

    def token(self, iss: str = VIEWER, *, key: PrivateKey | None = None, aud: str | None = None,
              lxm: str | None = SKELETON, now: float | None = None) -> dict[str, str]:
        jwt = create_service_jwt(key or self.keys[iss], iss=iss, aud=aud or self.did, lxm=lxm,
                                 now=now)
        return {"Authorization": f"Bearer {jwt}"}

    def skeleton(self, rkey: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        return self.http.get(f"{self.url}/xrpc/{SKELETON}",
                             params={"feed": self.uri(rkey), **params}, headers=headers)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("feedgen-app")
    index: SqliteIndex = store(tmp)
    index.apply([post(A, f"a{n}", 1_000 + n, langs=("en",) if n % 2 else ("de",)) for n in range(7)]
                + [post(B, "b0", 500), follow(VIEWER, B)])
    keys = {VIEWER: PrivateKey.generate("k256"), A: PrivateKey.generate("p256")}

    async def resolve_key(did: str, *, force_refresh: bool) -> PublicKey:
        if did not in keys:
            raise DidNotFound(f"no such DID {did}")
        return keys[did].public_key

    registry = Registry()
    register_builtins(registry)
    feeds = [Feed.build(registry.get(name), publisher=PUB, rkey=name)
             for name in ("latest", "following", "language")]
    feeds.append(Feed.build(registry.add(slow), publisher=PUB, rkey="slow", anonymous=True))
    feeds.append(Feed.build(registry.add(broken), publisher=PUB, rkey="broken"))
    port = free_port()
    config = FeedgenConfig(port=port, data_dir=tmp, hostname=f"localhost:{port}",
                           algorithm_timeout_s=0.5, entry_points=False)
    app = create_app(config, registry=registry, feeds=feeds, store=index, resolve_key=resolve_key)
    server = ServerThread(app, port=port)
    url = server.start()
    http = httpx.Client(timeout=10)
    try:
        yield Service(url, config.did, keys, http)
    finally:
        gate.set()
        http.close()
        server.stop()
        index.close()


def _error(response: httpx.Response, status: int, name: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == name, body
    return str(body["message"])


def test_describe_and_did_document(service: Service) -> None:
    assert service.did.startswith("did:web:localhost%3A")
    described = service.http.get(f"{service.url}/xrpc/app.bsky.feed.describeFeedGenerator").json()
    assert described["did"] == service.did
    assert {f["uri"] for f in described["feeds"]} == {
        service.uri(r) for r in ("latest", "following", "language", "slow", "broken")}
    doc = service.http.get(f"{service.url}/.well-known/did.json").json()
    assert doc["id"] == service.did
    assert doc["service"] == [{"id": "#bsky_fg", "type": "BskyFeedGenerator",
                               "serviceEndpoint": service.url.replace("127.0.0.1", "localhost")}]


def test_pages_of_a_feed_over_http(service: Service) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = service.skeleton("latest", **params).json()
        assert len(body["feed"]) <= 3
        seen += [item["post"].rsplit("/", 1)[1] for item in body["feed"]]
        cursor = body.get("cursor")
        if cursor is None:
            break
    assert seen == ["a6", "a5", "a4", "a3", "a2", "a1", "a0", "b0"]


def test_bad_requests_get_typed_errors(service: Service) -> None:
    _error(service.skeleton("nope"), 400, "UnknownFeed")
    _error(service.skeleton("latest", limit=0), 400, "InvalidRequest")
    _error(service.skeleton("latest", limit=101), 400, "InvalidRequest")
    assert "cursor" in _error(service.skeleton("latest", cursor="garbage"), 400, "InvalidRequest")
    _error(service.http.get(f"{service.url}/xrpc/{SKELETON}"), 400, "InvalidRequest")


def test_personal_feeds_need_a_valid_service_token(service: Service) -> None:
    _error(service.skeleton("following"), 401, "AuthenticationRequired")
    body = service.skeleton("following", service.token()).json()
    assert [i["post"].rsplit("/", 1)[1] for i in body["feed"]] == ["b0"]
    # the reference PDS's bare audience and the fragment form both name this service
    assert service.skeleton("following", service.token(aud=f"{service.did}#bsky_fg")).is_success
    # a p256 key works too
    assert service.skeleton("following", service.token(A)).is_success


@pytest.mark.parametrize("case, error", [
    ("forged", "BadJwtSignature"),
    ("expired", "JwtExpired"),
    ("wrong aud", "BadJwtAudience"),
    ("wrong lxm", "BadJwtLexiconMethod"),
    ("no lxm", "BadJwtLexiconMethod"),
    ("unknown issuer", "BadJwtIss"),
    ("not a jwt", "BadJwt"),
])
def test_bad_tokens_are_refused_even_on_anonymous_feeds(service: Service, case: str, error: str) -> None:
    headers = {
        "forged": lambda: service.token(key=PrivateKey.generate("k256")),
        "expired": lambda: service.token(now=time.time() - 3600),
        "wrong aud": lambda: service.token(aud="did:web:other.example"),
        "wrong lxm": lambda: service.token(lxm="app.bsky.feed.getFeed"),
        "no lxm": lambda: service.token(lxm=None),
        "unknown issuer": lambda: service.token("did:plc:stranger", key=PrivateKey.generate("k256")),
        "not a jwt": lambda: {"Authorization": "Bearer abc.def"},
    }[case]()
    for rkey in ("following", "latest"):
        _error(service.skeleton(rkey, headers), 401, error)


def test_a_replayed_token_is_refused(service: Service) -> None:
    headers = service.token()
    assert service.skeleton("following", headers).is_success
    assert "replayed" in _error(service.skeleton("following", headers), 401, "BadJwt")


def test_language_feed_answers_with_content_language(service: Service) -> None:
    response = service.skeleton("language", {"Accept-Language": "de-DE;q=0.8, fr;q=0"})
    assert response.headers["content-language"] == "de"
    assert [i["post"].rsplit("/", 1)[1] for i in response.json()["feed"]] == ["a6", "a4", "a2", "a0"]


def test_slow_and_broken_algorithms_fail_alone(service: Service) -> None:
    message = _error(service.skeleton("slow"), 504, "AlgorithmTimeout")
    assert "slow" in message and "0.5 s" in message
    assert "not a post" in _error(service.skeleton("broken"), 502, "AlgorithmFailed")
    assert service.skeleton("latest").is_success
    health = service.http.get(f"{service.url}/xrpc/_health").json()
    assert health["did"] == service.did and health["feeds"] == 5


def test_the_catalogue_lists_the_feeds(service: Service) -> None:
    page = service.http.get(f"{service.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert service.uri("following") in page.text and "signed-in" in page.text
