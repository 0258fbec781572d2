"""Token benchmark: node tokens minted and verified per second through `server.auth.TokenAuthority`.

Where it sits: outside the product, beside the other benchmarks; run ``python3 -m bench.auth_bench``
(``--quick`` for a short run). The verify figure bounds how many tunnel handshakes and API requests one
core can authenticate; the raw Ed25519 figure shows what the strict pre-checks cost on top.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc.jwk import OKPKey

from server.auth import TokenAuthority

__all__ = ["main", "run"]


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of *fn*, measured in batches for at least *seconds*."""
    for _ in range(50):  # warm-up
        fn()
    calls, started = 0, time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        calls += 200
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls / elapsed


def run(seconds: float = 2.0) -> dict[str, float]:
    key = OKPKey.generate_key("Ed25519", auto_kid=True)
    authority = TokenAuthority(key)
    token, _ = authority.mint_node_token("bench-node", "bench")
    head, payload, sig = token.split(".")
    public = key.get_op_key("verify")
    assert isinstance(public, Ed25519PublicKey)
    signature = base64.urlsafe_b64decode(sig + "==")
    signing_input = f"{head}.{payload}".encode()
    return {
        "verify_node_token/s": _rate(lambda: authority.verify_node_token(token), seconds),
        "mint_node_token/s": _rate(lambda: authority.mint_node_token("bench-node", "bench"), seconds),
        "raw_ed25519_verify/s": _rate(lambda: public.verify(signature, signing_input), seconds),
    }


def main(quick: bool = False) -> list[dict[str, Any]]:
    """Token verifications/s beside the bare Ed25519 signature check, as rows for `python3 -m bench`."""
    results = run(0.3 if quick else 2.0)
    for name, rate in results.items():
        print(f"{name:<24} {rate:>10,.0f}   ({1e6 / rate:.1f} µs each)")
    return [
        {
            "scenario": "node token verification (every check) vs bare Ed25519 verify",
            "ours": round(results["verify_node_token/s"]),
            "reference": round(results["raw_ed25519_verify/s"]),
            "unit": "verifications/s",
        }
    ]


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv[1:])
