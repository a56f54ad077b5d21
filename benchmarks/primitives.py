"""Primitives side by side: roost vs the raw libraries, in one run.

Prints ops/s for DAG-CBOR encode/decode (roost, cbrrr, libipld, cbor2), CID
string format/parse (roost, cbrrr's CID class, multiformats if installed),
k256 sign/verify (roost, coincurve) and p256 sign/verify (roost,
cryptography), and roost's ratio to each peer. Peers are installed on demand;
one that cannot be installed is skipped with the reason printed.

Targets (issue "Foundation"): roost encode/decode within 1.3x of the fastest
strict codec (cbrrr: libipld accepts non-minimal integers and decodes links
as bytes, cbor2 is neither strict nor fast); k256 verify within 1.2x of
coincurve; CID format+parse >= 1M/s.

    python benchmarks/primitives.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import ensure_pip  # noqa: E402
from roost import cbor  # noqa: E402
from roost.cid import CID  # noqa: E402
from roost.crypto import PrivateKey  # noqa: E402

POST = {
    "$type": "app.bsky.feed.post",
    "text": "Hello from roost: a post of ordinary length, with an emoji 🐦 and a link.",
    "createdAt": "2026-11-22T00:00:00.000Z",
    "langs": ["en"],
}
MESSAGE = cbor.encode({"hello": "world"}) * 8


def rate(fn: Callable[[], Any], seconds: float) -> float:
    """Best ops/s over three timed rounds of about ``seconds`` each."""
    n = 1
    while True:  # calibrate
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > 0.05:
            break
        n *= 4
    per_round = max(1, int(n * seconds / elapsed))
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        best = max(best, per_round / (time.perf_counter() - start))
    return best


def row(name: str, ours: float, peers: dict[str, float | str]) -> None:
    cells = [f"{name:<24} roost {ours:>11,.0f}/s"]
    for peer, value in peers.items():
        if isinstance(value, str):
            cells.append(f"{peer}: skipped ({value})")
        else:
            cells.append(f"{peer} {value:>11,.0f}/s (roost {ours / value:.2f}x)")
    print("   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per round")
    args = parser.parse_args()
    s = args.seconds
    have_libipld = ensure_pip("libipld", ">=3")
    have_cbor2 = ensure_pip("cbor2", ">=5.6")
    import cbrrr

    block = cbor.encode(POST)
    print(f"DAG-CBOR, a post of {len(block)} bytes")
    peers: dict[str, float | str] = {"cbrrr": rate(lambda: cbrrr.encode_dag_cbor(POST), s)}
    if have_libipld:
        import libipld

        assert libipld.encode_dag_cbor(POST) == block
        peers["libipld"] = rate(lambda: libipld.encode_dag_cbor(POST), s)
    else:
        peers["libipld"] = "not installable"
    if have_cbor2:
        import cbor2

        peers["cbor2"] = rate(lambda: cbor2.dumps(POST, canonical=True), s)
    else:
        peers["cbor2"] = "not installable"
    row("encode", rate(lambda: cbor.encode(POST), s), peers)

    peers = {"cbrrr": rate(lambda: cbrrr.decode_dag_cbor(block), s)}
    if have_libipld:
        peers["libipld"] = rate(lambda: libipld.decode_dag_cbor(block), s)
    else:
        peers["libipld"] = "not installable"
    if have_cbor2:
        peers["cbor2"] = rate(lambda: cbor2.loads(block), s)
    else:
        peers["cbor2"] = "not installable"
    row("decode", rate(lambda: cbor.decode(block), s), peers)

    node = {"e": [{"k": b"app.bsky.feed.post/3l" + bytes([97 + i]), "p": 0, "t": None,
                   "v": CID.for_raw(bytes([i]))} for i in range(4)], "l": None}
    node_block = cbor.encode(node)
    cbrrr_node = cbrrr.decode_dag_cbor(node_block)
    row(
        "encode MST node (4 links)",
        rate(lambda: cbor.encode(node), s),
        {"cbrrr": rate(lambda: cbrrr.encode_dag_cbor(cbrrr_node), s)},
    )
    row(
        "decode MST node (4 links)",
        rate(lambda: cbor.decode(node_block), s),
        {"cbrrr": rate(lambda: cbrrr.decode_dag_cbor(node_block), s)},
    )

    print("\nCID strings (format of a fresh CID + parse)")
    digests = [hashlib.sha256(bytes([i, j])).digest() for i in range(64) for j in range(16)]
    raw_cids = [b"\x01\x71\x12\x20" + d for d in digests]
    texts = [str(CID.from_bytes(b)) for b in raw_cids]
    it = iter(range(10**12))

    def ours_round_trip() -> None:
        i = next(it) & 1023
        CID.from_str(str(CID.from_bytes(raw_cids[i])))

    def cbrrr_round_trip() -> None:
        i = next(it) & 1023
        cbrrr.CID.decode(cbrrr.CID(raw_cids[i]).encode())

    peers = {"cbrrr.CID": rate(cbrrr_round_trip, s)}
    if ensure_pip("multiformats", ">=0.3"):
        from multiformats import CID as MfCID

        def mf_round_trip() -> None:
            i = next(it) & 1023
            MfCID.decode(str(MfCID("base32", 1, "dag-cbor", ("sha2-256", digests[i]))))

        peers["multiformats"] = rate(mf_round_trip, s)
    else:
        peers["multiformats"] = "not installable"
    row("format+parse", rate(ours_round_trip, s), peers)
    row(
        "parse",
        rate(lambda: CID.from_str(texts[next(it) & 1023]), s),
        {"cbrrr.CID": rate(lambda: cbrrr.CID.decode(texts[next(it) & 1023]), s)},
    )

    print("\nSignatures over a 104-byte message")
    import coincurve
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    k256 = PrivateKey.from_bytes(hashlib.sha256(b"bench k256").digest(), "k256")
    cc_priv = coincurve.PrivateKey(k256.to_bytes())
    cc_pub = coincurve.PublicKey(k256.public_key.compressed)
    sig = k256.sign(MESSAGE)
    der = cc_priv.sign(MESSAGE)
    row("k256 sign", rate(lambda: k256.sign(MESSAGE), s),
        {"coincurve": rate(lambda: cc_priv.sign(MESSAGE), s)})
    pub = k256.public_key
    assert pub.verify(MESSAGE, sig) and cc_pub.verify(der, MESSAGE)
    row("k256 verify", rate(lambda: pub.verify(MESSAGE, sig), s),
        {"coincurve": rate(lambda: cc_pub.verify(der, MESSAGE), s)})

    p256 = PrivateKey.from_bytes(hashlib.sha256(b"bench p256").digest(), "p256")
    cr_priv = ec.derive_private_key(int.from_bytes(p256.to_bytes(), "big"), ec.SECP256R1())
    cr_pub = cr_priv.public_key()
    p_sig = p256.sign(MESSAGE)
    p_der = cr_priv.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    row("p256 sign", rate(lambda: p256.sign(MESSAGE), s),
        {"cryptography": rate(lambda: cr_priv.sign(MESSAGE, ec.ECDSA(hashes.SHA256())), s)})
    p_pub = p256.public_key
    row("p256 verify", rate(lambda: p_pub.verify(MESSAGE, p_sig), s),
        {"cryptography": rate(lambda: cr_pub.verify(p_der, MESSAGE, ec.ECDSA(hashes.SHA256())), s)})


if __name__ == "__main__":
    main()
