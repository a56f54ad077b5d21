"""did:plc op logic: encoding, DIDs, signatures, the directory algorithm, documents."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost import cbor
from roost.crypto import PrivateKey, parse_did_key
from roost.errors import InvalidPlcOperation, RateLimitExceeded
from roost.plc import (
    MAX_OP_BYTES,
    RECOVERY_WINDOW,
    DocumentState,
    LegacyCreate,
    LogEntry,
    OpRateLimits,
    PlcOperation,
    PlcTombstone,
    Service,
    build_genesis,
    build_tombstone,
    build_update,
    check_rate_limits,
    decode_sig,
    did_for_genesis,
    encode_sig,
    format_timestamp,
    load_op,
    op_cid,
    parse_op,
    parse_timestamp,
    replay_log,
    sign_op,
    state_from_op,
    validate_next_op,
    verify_op,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)

K0 = PrivateKey.from_hex("11" * 32, "k256")
K1 = PrivateKey.from_hex("22" * 32, "k256")
K2 = PrivateKey.from_hex("33" * 32, "p256")
K3 = PrivateKey.from_hex("44" * 32, "p256")
SIGNING = PrivateKey.from_hex("55" * 32, "k256")
OUTSIDER = PrivateKey.from_hex("66" * 32, "k256")

ORDER = {
    "k256": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    "p256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}

# -- worked examples (identity.md §3.4) ------------------------------------------------

LEGACY_GENESIS: dict[str, Any] = {
    "sig": "7QTzqO1BcL3eDzP4P_YBxMmv5U4brHzAItkM9w5o8gZA7ElZkrVYEwsfQCfk5EoWLk58Z1y6fyNP9x1pthJnlw",
    "prev": None,
    "type": "create",
    "handle": "dan.bsky.social",
    "service": "https://bsky.social",
    "signingKey": "did:key:zQ3shP5TBe1sQfSttXty15FAEHV1DZgcxRZNxvEWnPfLFwLxJ",
    "recoveryKey": "did:key:zQ3shhCGUqDKjStzuDxPkTxN6ujddP4RkEKJJouJGRRkaLGbg",
}
MODERN_GENESIS: dict[str, Any] = {
    "type": "plc_operation",
    "rotationKeys": [
        "did:key:zQ3shwPdax6jKMbhtzbueGwSjc7RnjsmPcNB1vQUpbKUCN1t1",
        "did:key:zQ3shmMcsFLvSZQy2pSZFFKZNmQSNmyuSepPXMHpgTYrontu2",
    ],
    "verificationMethods": {},
    "alsoKnownAs": ["at://foo"],
    "services": {},
    "prev": None,
    "sig": "1pTjQD5-LA4gN6tz1t7-28Tzct9NI-oYMN8QVUQkB7493j-vKeZnZO0YqNNBCXsORatmfKUXwteC9zW82mi_yw",
}


def test_legacy_genesis_worked_example() -> None:
    op = parse_op(LEGACY_GENESIS)
    assert isinstance(op, LegacyCreate)
    assert len(op.cbor_bytes()) == 303
    assert did_for_genesis(op) == "did:plc:yk4dd2qkboz2yv6tpubpc6co"
    assert op_cid(op) == "bafyreigcxay6ucqlwowfpu35alyxqtv3c4vsj7gmdtmnidsnqs6nblyarq"
    # Signed by signingKey, which is rotation index 1 after normalisation.
    assert verify_op(op, [LEGACY_GENESIS["recoveryKey"]]) is None
    assert verify_op(op, [LEGACY_GENESIS["signingKey"]]) == 0
    assert verify_op(op, op.normalized().rotation_keys) == 1
    result = validate_next_op("did:plc:yk4dd2qkboz2yv6tpubpc6co", [], op, T0)
    assert result.key_index == 1 and result.prev is None
    state = state_from_op("did:plc:yk4dd2qkboz2yv6tpubpc6co", op)
    assert state is not None
    assert state.to_json() == {
        "did": "did:plc:yk4dd2qkboz2yv6tpubpc6co",
        "verificationMethods": {"atproto": LEGACY_GENESIS["signingKey"]},
        "rotationKeys": [LEGACY_GENESIS["recoveryKey"], LEGACY_GENESIS["signingKey"]],
        "alsoKnownAs": ["at://dan.bsky.social"],
        "services": {
            "atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "https://bsky.social"}
        },
    }


def test_modern_genesis_worked_example() -> None:
    op = parse_op(MODERN_GENESIS)
    data = op.cbor_bytes()
    assert did_for_genesis(op) == "did:plc:2s2mvm52ttz6r4hocmrq7x27"
    assert op_cid(op) == "bafyreiguwtflhou46pupb3qtemh56x6o3fn3y7ym2q3jgoms35tdu2d5ga"
    # Key order sig, prev, type, services, alsoKnownAs, rotationKeys, verificationMethods.
    assert data.startswith(bytes.fromhex("a7 63 736967 7856".replace(" ", "")))
    after_sig = data[1 + 4 + 2 + 86 :]
    assert after_sig.startswith(bytes.fromhex("6470726576f664747970656d") + b"plc_operation")
    assert data.endswith(bytes.fromhex("73766572696669636174696f6e4d6574686f6473a0"))
    assert op.signing_bytes()[0] == 0xA6 and op.signing_bytes() == cbor.encode(
        {k: v for k, v in MODERN_GENESIS.items() if k != "sig"}
    )
    assert verify_op(op, MODERN_GENESIS["rotationKeys"]) == 1  # signed by rotationKeys[1]
    assert validate_next_op("did:plc:2s2mvm52ttz6r4hocmrq7x27", [], op, T0).key_index == 1


def test_json_round_trip_and_load_op() -> None:
    for raw in (LEGACY_GENESIS, MODERN_GENESIS):
        op = parse_op(raw)
        assert op.to_json() == raw
        assert load_op(op.to_json()) == op


# -- helpers --------------------------------------------------------------------------


def genesis(
    keys: list[PrivateKey] | None = None, signer: PrivateKey | None = None
) -> tuple[str, Any]:
    keys = keys if keys is not None else [K0, K1]
    op = build_genesis(
        rotation_keys=keys,
        signing_key=SIGNING,
        handle="alice.test",
        pds_endpoint="https://pds.test",
    )
    signed = sign_op(op, signer or keys[0])
    return did_for_genesis(signed), signed


class Log:
    """A DID's log as a directory would keep it, driven through validate_next_op."""

    def __init__(self, did: str) -> None:
        self.did = did
        self.entries: list[LogEntry] = []

    def submit(self, op: Any, at: datetime) -> Any:
        result = validate_next_op(self.did, self.entries, op, at)
        gone = set(result.nullified)
        self.entries = [
            LogEntry(e.did, e.operation, e.cid, e.created_at, e.nullified or e.cid in gone)
            for e in self.entries
        ]
        self.entries.append(LogEntry(self.did, op, result.cid, at))
        return result

    @property
    def chain(self) -> list[LogEntry]:
        return [e for e in self.entries if not e.nullified]

    def head(self) -> LogEntry:
        return self.chain[-1]


def new_log(keys: list[PrivateKey] | None = None) -> tuple[Log, Any]:
    did, op = genesis(keys)
    log = Log(did)
    log.submit(op, T0)
    return log, op


def update(prev: LogEntry, key: PrivateKey, **changes: Any) -> Any:
    return sign_op(build_update(prev.operation, prev.cid, **changes), key)


# -- genesis and chains ---------------------------------------------------------------------


def test_genesis_rules() -> None:
    did, op = genesis()
    assert did.startswith("did:plc:") and len(did) == 32
    assert validate_next_op(did, [], op, T0).key_index == 0
    with pytest.raises(InvalidPlcOperation, match="Hash of genesis operation does not match"):
        validate_next_op("did:plc:" + "a" * 24, [], op, T0)
    # Signed by a key that is not one of its own rotation keys.
    forged = sign_op(op, OUTSIDER)
    with pytest.raises(InvalidPlcOperation, match="Invalid signature"):
        validate_next_op(did_for_genesis(forged), [], forged, T0)
    # A tombstone cannot create a DID; a non-null prev cannot either.
    tomb = sign_op(build_tombstone(op_cid(op)), K0)
    with pytest.raises(InvalidPlcOperation, match="tombstone cannot create"):
        validate_next_op(did, [], tomb, T0)
    with_prev = sign_op(build_update(op, op_cid(op)), K0)
    with pytest.raises(InvalidPlcOperation, match="expected prev null"):
        validate_next_op(did_for_genesis(with_prev), [], with_prev, T0)


def test_chain_of_updates_k256_and_p256() -> None:
    log, _ = new_log([K0, K2])
    r1 = log.submit(update(log.head(), K2, handle="bob.test"), T0 + timedelta(seconds=1))
    assert r1.key_index == 1 and r1.nullified == ()
    # Rotate to p256-only keys, then sign with the new key.
    log.submit(update(log.head(), K0, rotation_keys=[K3, K2]), T0 + timedelta(seconds=2))
    log.submit(update(log.head(), K3, pds_endpoint="https://new.test"), T0 + timedelta(seconds=3))
    log.submit(update(log.head(), K2, signing_key=K1), T0 + timedelta(seconds=4))
    state = state_from_op(log.did, log.head().operation)
    assert state is not None
    assert state.handle == "bob.test"
    assert state.pds_endpoint == "https://new.test"
    assert state.signing_key == K1.public_key.did_key()
    assert state.rotation_keys == (K3.public_key.did_key(), K2.public_key.did_key())
    assert [e.nullified for e in log.entries] == [False] * 5
    # The whole audit log replays to the same result.
    assert replay_log(log.did, log.entries) == log.entries


def test_update_needs_a_rotation_key_of_the_previous_op() -> None:
    log, _ = new_log([K0, K1])
    # K0 was removed by this op: it can no longer sign the next one.
    log.submit(update(log.head(), K0, rotation_keys=[K2]), T0 + timedelta(seconds=1))
    with pytest.raises(InvalidPlcOperation, match="not signed by a rotationKey of the previous"):
        log.submit(update(log.head(), K0, handle="x.test"), T0 + timedelta(seconds=2))
    with pytest.raises(InvalidPlcOperation, match="Invalid signature"):
        log.submit(update(log.head(), OUTSIDER, handle="x.test"), T0 + timedelta(seconds=2))
    # The signing (atproto) key is not a rotation key.
    with pytest.raises(InvalidPlcOperation, match="Invalid signature"):
        log.submit(update(log.head(), SIGNING, handle="x.test"), T0 + timedelta(seconds=2))
    log.submit(update(log.head(), K2, handle="x.test"), T0 + timedelta(seconds=2))


def test_forged_op_contents() -> None:
    log, _ = new_log()
    good = update(log.head(), K0, handle="bob.test")
    tampered = parse_op({**good.to_json(), "alsoKnownAs": ["at://mallory.test"]})
    with pytest.raises(InvalidPlcOperation, match="Invalid signature"):
        log.submit(tampered, T0 + timedelta(seconds=1))


def test_wrong_prev() -> None:
    log, _ = new_log()
    unknown = update(log.head(), K0)
    _, other = genesis([K0, K1], signer=K1)
    stray = sign_op(build_update(other, op_cid(other)), K0)
    with pytest.raises(InvalidPlcOperation, match="not correctly ordered.*not in the log"):
        log.submit(stray, T0 + timedelta(seconds=1))
    null_prev = sign_op(PlcOperation((), {}, (), {}, None), K0)
    with pytest.raises(InvalidPlcOperation, match="prev is null"):
        log.submit(null_prev, T0 + timedelta(seconds=1))
    log.submit(unknown, T0 + timedelta(seconds=1))
    # Resubmitting the same op: prev now has a child signed by the same key.
    with pytest.raises(InvalidPlcOperation, match="higher priority"):
        log.submit(unknown, T0 + timedelta(seconds=2))


def test_timestamps_must_increase() -> None:
    log, _ = new_log()
    with pytest.raises(InvalidPlcOperation, match="timestamp order"):
        log.submit(update(log.head(), K0), T0)


# -- recovery ---------------------------------------------------------------------------------


def test_recovery_inside_window_nullifies() -> None:
    log, _ = new_log([K0, K1, K2])
    g_entry = log.head()
    bad1 = log.submit(update(g_entry, K1, handle="evil.test"), T0 + timedelta(hours=1))
    log.submit(update(log.head(), K1, handle="evil2.test"), T0 + timedelta(hours=2))
    result = log.submit(update(g_entry, K0, handle="alice.test"), T0 + timedelta(hours=70))
    assert result.is_recovery and result.nullified[0] == bad1.cid and len(result.nullified) == 2
    assert [e.nullified for e in log.entries] == [False, True, True, False]
    assert replay_log(log.did, log.entries) == log.entries
    # Appending to a nullified op is refused.
    nullified_entry = log.entries[2]
    with pytest.raises(InvalidPlcOperation, match="nullified operation"):
        log.submit(update(nullified_entry, K0), T0 + timedelta(hours=71))


def test_recovery_window_boundary() -> None:
    for lapse, ok in (
        (RECOVERY_WINDOW, True),
        (RECOVERY_WINDOW + timedelta(milliseconds=1), False),
    ):
        log, _ = new_log([K0, K1])
        g_entry = log.head()
        t1 = T0 + timedelta(seconds=1)
        log.submit(update(g_entry, K1, rotation_keys=[]), t1)
        recovery = update(g_entry, K0)
        if ok:
            assert log.submit(recovery, t1 + lapse).is_recovery
        else:
            with pytest.raises(InvalidPlcOperation, match="72 hr recovery window"):
                log.submit(recovery, t1 + lapse)


def test_recovery_needs_strictly_higher_key() -> None:
    log, _ = new_log([K0, K1, K2])
    g_entry = log.head()
    log.submit(update(g_entry, K1, handle="evil.test"), T0 + timedelta(seconds=1))
    # Same key as the disputed op: refused; lower priority: refused.
    for key in (K1, K2):
        with pytest.raises(InvalidPlcOperation, match="higher priority"):
            log.submit(update(g_entry, key, handle="x.test"), T0 + timedelta(seconds=2))
    log.submit(update(g_entry, K0, handle="fixed.test"), T0 + timedelta(seconds=3))
    # A second fork at genesis must beat K0 now, which is impossible.
    with pytest.raises(InvalidPlcOperation, match="higher priority"):
        log.submit(update(g_entry, K0, handle="again.test"), T0 + timedelta(seconds=4))


def test_recovery_of_a_tombstone_and_no_ops_after_tombstone() -> None:
    log, _ = new_log([K0, K1])
    g_entry = log.head()
    tomb = sign_op(build_tombstone(g_entry.cid), K1)
    assert isinstance(tomb, PlcTombstone)
    log.submit(tomb, T0 + timedelta(seconds=1))
    assert state_from_op(log.did, log.head().operation) is None
    after_tomb = sign_op(PlcOperation((K0.public_key.did_key(),), {}, (), {}, log.head().cid), K0)
    with pytest.raises(InvalidPlcOperation, match="tombstoned"):
        log.submit(after_tomb, T0 + timedelta(seconds=2))
    with pytest.raises(InvalidPlcOperation, match="tombstoned"):
        build_update(tomb, log.head().cid)
    # K0 outranks K1, which signed the tombstone: the recovery forks before it.
    result = log.submit(update(g_entry, K0, handle="back.test"), T0 + timedelta(hours=1))
    assert result.nullified == (op_cid(tomb),)
    state = state_from_op(log.did, log.head().operation)
    assert state is not None and state.handle == "back.test"


def test_empty_rotation_keys_freezes_the_did() -> None:
    log, _ = new_log([K0])
    log.submit(update(log.head(), K0, rotation_keys=[]), T0 + timedelta(seconds=1))
    with pytest.raises(InvalidPlcOperation, match="Invalid signature"):
        log.submit(update(log.head(), K0, handle="x.test"), T0 + timedelta(seconds=2))


# -- structure and limits -------------------------------------------------------------------------


def signed_json(**changes: Any) -> dict[str, Any]:
    _, op = genesis()
    raw = {**op.to_json(), **changes}
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"alsoKnownAs": ["at://" + "a" * 1000] * 4}, "Operation too large"),
        ({"alsoKnownAs": [f"at://h{i}.test" for i in range(11)]}, "Too many alsoKnownAs"),
        ({"alsoKnownAs": ["at://" + "a" * 254]}, "alsoKnownAs entry too long"),
        ({"alsoKnownAs": ["at://a.test", "at://a.test"]}, "Duplicate alsoKnownAs"),
        ({"rotationKeys": [K0.public_key.did_key()] * 11}, "Too many rotationKeys"),
        ({"rotationKeys": ["did:key:zQ3sh"]}, "Invalid rotationKey"),
        (
            {"rotationKeys": ["did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"]},
            "Invalid rotationKey",
        ),
        (
            {"verificationMethods": {"a" * 33: K0.public_key.did_key()}},
            "Verification method id too long",
        ),
        (
            {"verificationMethods": {"atproto": "zQ3shP5TBe1sQfSttXty15F"}},
            "Invalid verificationMethod",
        ),
        (
            {"verificationMethods": {f"k{i}": K0.public_key.did_key() for i in range(11)}},
            "Too many verificationMethods",
        ),
        ({"services": {"s" * 33: {"type": "x", "endpoint": "https://x"}}}, "Service id too long"),
        (
            {"services": {"pds": {"type": "t" * 257, "endpoint": "https://x"}}},
            "Service type too long",
        ),
        (
            {"services": {"pds": {"type": "x", "endpoint": "https://" + "e" * 505}}},
            "Service endpoint too long",
        ),
        (
            {"services": {f"s{i}": {"type": "x", "endpoint": "https://x"} for i in range(11)}},
            "Too many services",
        ),
        (
            {"services": {"pds": {"type": "x", "endpoint": "https://x", "extra": 1}}},
            "exactly type and endpoint",
        ),
        ({"services": {"pds": "https://x"}}, "exactly type and endpoint"),
        ({"handles": ["x"]}, "unknown field"),
        (
            {"prev": {"$link": "bafyreigcxay6ucqlwowfpu35alyxqtv3c4vsj7gmdtmnidsnqs6nblyarq"}},
            "CID string",
        ),
        ({"prev": "not-a-cid"}, "not a valid CID"),
        ({"type": "plc_update"}, "type must be"),
        ({"rotationKeys": "did:key:x"}, "rotationKeys must be an array"),
        ({"alsoKnownAs": [1]}, "must be a string"),
        ({"verificationMethods": {"atproto": 1.5}}, "DAG-CBOR"),
    ],
)
def test_structure_and_limits(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPlcOperation, match=message):
        parse_op(signed_json(**changes))


def test_missing_fields() -> None:
    raw = signed_json()
    for key in ("sig", "prev", "services", "type"):
        bad = {k: v for k, v in raw.items() if k != key}
        with pytest.raises(InvalidPlcOperation):
            parse_op(bad)
    assert parse_op({k: v for k, v in raw.items() if k != "sig"}, require_sig=False).sig is None
    with pytest.raises(InvalidPlcOperation, match="JSON object"):
        parse_op([raw])
    with pytest.raises(InvalidPlcOperation, match="prev null"):
        parse_op({**LEGACY_GENESIS, "prev": op_cid(parse_op(MODERN_GENESIS))})
    with pytest.raises(InvalidPlcOperation, match="not null"):
        parse_op({"type": "plc_tombstone", "prev": None, "sig": raw["sig"]})


def test_size_limit_is_the_cbor_size() -> None:
    _, op = genesis()
    aka = [f"at://{i}" + "x" * 251 for i in range(10)]

    def raw_with(endpoint_len: int) -> dict[str, Any]:
        svc = {
            "type": "AtprotoPersonalDataServer",
            "endpoint": "https://" + "e" * (endpoint_len - 8),
        }
        vms = {f"k{i}": K0.public_key.did_key() for i in range(10)}
        return {**op.to_json(), "alsoKnownAs": aka, "services": {"atproto_pds": svc},
                "verificationMethods": vms}  # fmt: skip

    base = len(cbor.encode(raw_with(256)))
    for target, ok in ((MAX_OP_BYTES, True), (MAX_OP_BYTES + 1, False)):
        raw = raw_with(256 + target - base)
        assert len(cbor.encode(raw)) == target
        if ok:
            parse_op(raw)
        else:
            with pytest.raises(InvalidPlcOperation, match="Operation too large"):
                parse_op(raw)


# -- signature encoding --------------------------------------------------------------------------


def high_s(sig: str, curve: str) -> str:
    raw = decode_sig(sig)
    s = int.from_bytes(raw[32:], "big")
    return encode_sig(raw[:32] + (ORDER[curve] - s).to_bytes(32, "big"))


@pytest.mark.parametrize("key", [K0, K2], ids=["k256", "p256"])
def test_high_s_is_refused(key: PrivateKey) -> None:
    did, op = genesis([key])
    assert validate_next_op(did, [], op, T0)
    flipped = parse_op({**op.to_json(), "sig": high_s(op.sig, key.curve)})
    # Same CID-relevant content but a different sig: a different DID.
    with pytest.raises(InvalidPlcOperation, match="high-S"):
        validate_next_op(did_for_genesis(flipped), [], flipped, T0)


def test_sig_encoding_rules() -> None:
    _, op = genesis()
    sig = op.sig
    raw = decode_sig(sig)
    assert len(raw) == 64 and encode_sig(raw) == sig
    cases = {
        sig + "==": "padding",
        sig[:40] + "\n" + sig[40:]: "whitespace",
        sig + "\n": "whitespace",
        " " + sig: "whitespace",
        base64.b64encode(raw).decode().rstrip("=").replace("-", "+").replace("_", "/")
        if any(c in sig for c in "-_")
        else sig[:-1] + "+": "base64url",
        sig[:-4]: "64 bytes",
        encode_sig(raw + b"\x00"): "64 bytes",
    }
    # Non-zero unused trailing bits: 86 chars carry 516 bits for 512.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    cases[sig[:-1] + alphabet[last | 1]] = "trailing bits"
    for bad, message in cases.items():
        if bad == sig:
            continue
        with pytest.raises(InvalidPlcOperation, match=message):
            decode_sig(bad)
        with pytest.raises(InvalidPlcOperation):
            parse_op({**op.to_json(), "sig": bad})
    # DER: 70-72 bytes.
    der = base64.urlsafe_b64encode(b"\x30\x44\x02\x20" + raw[:32] + b"\x02\x20" + raw[32:])
    with pytest.raises(InvalidPlcOperation, match="64 bytes"):
        decode_sig(der.decode().rstrip("="))
    with pytest.raises(InvalidPlcOperation):
        decode_sig(None)


@given(st.binary(min_size=64, max_size=64))
def test_sig_codec_round_trip(raw: bytes) -> None:
    text = encode_sig(raw)
    assert len(text) == 86 and decode_sig(text) == raw


# -- documents, rate limits, builders, timestamps ------------------------------------------------


def test_did_document_rendering() -> None:
    did, op = genesis()
    op = sign_op(
        PlcOperation(
            rotation_keys=(K0.public_key.did_key(),),
            verification_methods={
                "atproto": K1.public_key.did_key(),
                "atproto_label": K2.public_key.did_key(),
                "other": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
            },
            also_known_as=("at://alice.test", "https://alice.example"),
            services={"atproto_pds": Service("AtprotoPersonalDataServer", "https://pds.test")},
            prev=None,
        ),
        K0,
    )
    did = did_for_genesis(op)
    state = state_from_op(did, op)
    assert state is not None
    doc = state.did_document()
    assert doc == {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1",
            "https://w3id.org/security/suites/ecdsa-2019/v1",
        ],
        "id": did,
        "alsoKnownAs": ["at://alice.test", "https://alice.example"],
        "verificationMethod": [
            {"id": f"{did}#atproto", "type": "Multikey", "controller": did,
             "publicKeyMultibase": K1.public_key.multikey()},
            {"id": f"{did}#atproto_label", "type": "Multikey", "controller": did,
             "publicKeyMultibase": K2.public_key.multikey()},
            {"id": f"{did}#other", "type": "Multikey", "controller": did,
             "publicKeyMultibase": "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"},
        ],
        "service": [
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.test"}
        ],
    }  # fmt: skip
    assert (
        parse_did_key("did:key:" + doc["verificationMethod"][0]["publicKeyMultibase"])
        == K1.public_key
    )
    assert DocumentState.from_json(state.to_json()) == state
    assert state.handle == "alice.test" and state.pds_endpoint == "https://pds.test"


def test_rate_limits() -> None:
    limits = OpRateLimits(per_hour=3, per_day=5, per_week=6)
    now = T0 + timedelta(days=10)
    _, op = genesis()

    def entries(*ages: timedelta) -> list[LogEntry]:
        return [LogEntry("did:plc:x", op, "c", now - age) for age in ages]

    check_rate_limits(entries(*[timedelta(minutes=1)] * 2), now, limits)
    with pytest.raises(RateLimitExceeded, match="hour"):
        check_rate_limits(entries(*[timedelta(minutes=1)] * 3), now, limits)
    with pytest.raises(RateLimitExceeded, match="day"):
        check_rate_limits(entries(*[timedelta(hours=2)] * 5), now, limits)
    with pytest.raises(RateLimitExceeded, match="week"):
        check_rate_limits(entries(*[timedelta(days=2)] * 6), now, limits)
    check_rate_limits(entries(*[timedelta(days=8)] * 50), now, limits)


def test_build_update_semantics() -> None:
    legacy = parse_op(LEGACY_GENESIS)
    cid = op_cid(legacy)
    op = build_update(legacy, cid, handle="dholms.xyz")
    assert op.prev == cid and op.also_known_as == ("at://dholms.xyz",)
    assert op.rotation_keys == (LEGACY_GENESIS["recoveryKey"], LEGACY_GENESIS["signingKey"])
    op2 = build_update(op, "bafyreigcxay6ucqlwowfpu35alyxqtv3c4vsj7gmdtmnidsnqs6nblyarq",
                       also_known_as=["https://x.example"], handle="new.test",
                       pds_endpoint="https://pds2.test", signing_key=K2)  # fmt: skip
    assert op2.also_known_as == ("at://new.test", "https://x.example")
    assert op2.services["atproto_pds"] == Service("AtprotoPersonalDataServer", "https://pds2.test")
    assert op2.verification_methods == {"atproto": K2.public_key.did_key()}
    assert sign_op(op2, K0).sig is not None and op2.sig is None
    with pytest.raises(InvalidPlcOperation, match="not signed"):
        op2.cbor_bytes()


def test_legacy_create_normalisation_adds_prefixes() -> None:
    op = LegacyCreate(
        signing_key=K1.public_key.did_key(),
        recovery_key=K0.public_key.did_key(),
        handle="https://alice.test",
        service="pds.test",
    )
    norm = op.normalized()
    assert norm.also_known_as == ("at://alice.test",)
    assert norm.services["atproto_pds"].endpoint == "https://pds.test"
    signed = sign_op(op, K1)
    assert validate_next_op(did_for_genesis(signed), [], signed, T0).key_index == 1


def test_timestamps() -> None:
    when = datetime(2024, 2, 3, 4, 5, 6, 789_999, tzinfo=UTC)
    assert format_timestamp(when) == "2024-02-03T04:05:06.789Z"
    assert parse_timestamp("2024-02-03T04:05:06.789Z") == when.replace(microsecond=789_000)
    assert parse_timestamp("2024-02-03T05:05:06.789+01:00") == when.replace(microsecond=789_000)
    for bad in ("2024-02-03T04:05:06", "yesterday", ""):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_log_entry_json() -> None:
    op = parse_op(MODERN_GENESIS)
    entry = LogEntry("did:plc:2s2mvm52ttz6r4hocmrq7x27", op, op_cid(op), T0, seq=7)
    assert LogEntry.from_json(entry.to_json()) == LogEntry(entry.did, op, entry.cid, T0)
    assert LogEntry.from_json(json.loads(json.dumps(entry.to_sequenced_json()))) == entry
    with pytest.raises(InvalidPlcOperation, match="mismatched did"):
        LogEntry.from_json(entry.to_json(), did="did:plc:" + "b" * 24)
