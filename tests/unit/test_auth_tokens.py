"""`TokenVerifier`: JWTs signed here with pyjwt/cryptography, JWK sets served by a real local
HTTP server, and zero-cache's connection rules (error kinds and messages of auth.ts/jwt.ts)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fixtures.http_server import Reply, TestHttpServer, free_port
from zcache.app_server.http import HttpClient
from zcache.auth import AuthData, AuthError, TokenVerifier
from zcache.auth.jwt_keys import KeyConfigError
from zcache.config import AuthConfig

pytestmark = pytest.mark.unit

SECRET = "a-test-secret-that-is-32-bytes!!"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _auth(**values: Any) -> AuthConfig:
    base: dict[str, Any] = {
        "jwk": None, "jwks_url": None, "secret": None, "issuer": None, "audience": None,
        "revalidate_interval_seconds": 300.0, "retransform_interval_seconds": 300.0,
    }
    base.update(values)
    return AuthConfig(**base)


def _public_jwk(key: Any, **extra: Any) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()) if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(extra)
    return jwk


def _token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def _claims(sub: str = "u1", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 3600, **extra}


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 0.3 s of real idleness: sleeps of minutes pass at
    once, while real I/O with the thread HTTP server still gets real time to answer."""
    return trio.testing.MockClock(autojump_threshold=0.3)


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    try:
        yield client
    finally:
        await client.aclose()


async def _refused(verifier: TokenVerifier, token: str | None, user_id: str | None = "u1", previous: AuthData | None = None) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await verifier.authenticate(token, user_id, previous=previous)
    return caught.value


async def test_valid_hs256_token(http: HttpClient) -> None:
    verifier = TokenVerifier(_auth(secret=SECRET), http=http, custom_endpoints=False)
    assert verifier.mode == "jwt"
    claims = _claims(role="admin")
    auth = await verifier.authenticate(_token(claims), "u1")
    assert auth == AuthData(token=auth.token, user_id="u1", claims=claims)
    assert auth.is_jwt


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (_claims(exp=int(time.time()) - 1), 'JWTExpired: "exp" claim timestamp check failed'),
        (_claims(nbf=int(time.time()) + 600), 'JWTClaimValidationFailed: "nbf" claim timestamp check failed'),
        (_claims(sub="u2"), 'JWTClaimValidationFailed: unexpected "sub" claim value'),
        ({"iat": int(time.time())}, 'JWTClaimValidationFailed: missing required "sub" claim'),
        (_claims(exp="tomorrow"), 'JWTClaimValidationFailed: "exp" claim must be a number'),
    ],
)
async def test_claims_failures_are_auth_invalidated(claims: dict[str, Any], message: str, http: HttpClient) -> None:
    verifier = TokenVerifier(_auth(secret=SECRET), http=http, custom_endpoints=False)
    error = await _refused(verifier, _token(claims))
    assert (error.kind, error.message) == ("AuthInvalidated", f"Failed to decode auth token: {message}")
    assert error.error_body() == {"kind": "AuthInvalidated", "message": error.message, "origin": "zeroCache"}


async def test_forged_and_malformed_tokens(http: HttpClient) -> None:
    verifier = TokenVerifier(_auth(secret=SECRET), http=http, custom_endpoints=False)
    forged = _token(_claims(), key="another-secret-that-is-32-bytes!!")
    assert (await _refused(verifier, forged)).message == "Failed to decode auth token: JWSSignatureVerificationFailed: signature verification failed"
    header, payload, signature = _token(_claims()).split(".")
    tampered = ".".join([header, _b64(_claims(sub="u1", admin=True)), signature])
    assert "signature verification failed" in (await _refused(verifier, tampered)).message
    assert (await _refused(verifier, "not-a-jwt")).message == "Failed to decode auth token: JWSInvalid: Invalid Compact JWS"
    assert (await _refused(verifier, "e30.e30.")).message.startswith("Failed to decode auth token: JWSInvalid: JWS \"alg\"")


async def test_alg_none_is_refused(http: HttpClient) -> None:
    verifier = TokenVerifier(_auth(secret=SECRET), http=http, custom_endpoints=False)
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."
    error = await _refused(verifier, unsigned)
    assert (error.kind, error.message) == (
        "AuthInvalidated",
        'Failed to decode auth token: JOSEAlgNotAllowed: "alg" (Algorithm) Header Parameter value not allowed',
    )


async def test_rs256_jwk_and_algorithm_confusion(http: HttpClient) -> None:
    jwk = _public_jwk(RSA_KEY)
    verifier = TokenVerifier(_auth(jwk=json.dumps(jwk)), http=http, custom_endpoints=False)
    claims = _claims()
    assert (await verifier.authenticate(_token(claims, RSA_KEY, "RS256"), "u1")).claims == claims
    assert (await verifier.authenticate(_token(claims, RSA_KEY, "PS256"), "u1")).claims == claims
    # The classic confusion: an HS256 token whose HMAC key is the server's *public* key.
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = hmac.new(json.dumps(jwk).encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    error = await _refused(verifier, confused)
    assert error.kind == "AuthInvalidated" and "JOSEAlgNotAllowed" in error.message
    # A key pinned to one algorithm allows only that one.
    pinned = TokenVerifier(_auth(jwk=json.dumps(_public_jwk(RSA_KEY, alg="RS256"))), http=http, custom_endpoints=False)
    assert "JOSEAlgNotAllowed" in (await _refused(pinned, _token(claims, RSA_KEY, "PS256"))).message


async def test_ec_jwk(http: HttpClient) -> None:
    verifier = TokenVerifier(_auth(jwk=json.dumps(_public_jwk(EC_KEY))), http=http, custom_endpoints=False)
    assert (await verifier.authenticate(_token(_claims(), EC_KEY, "ES256"), "u1")).user_id == "u1"
    assert "JOSEAlgNotAllowed" in (await _refused(verifier, _token(_claims(), RSA_KEY, "RS256"))).message


@pytest.mark.parametrize(
    ("jwk", "problem"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"kty": "RSA", "n": "x", "e": "AQAB", "d": "secret"}), "private key"),
        (json.dumps({**_public_jwk(RSA_KEY), "use": "enc"}), "use is 'enc'"),
        (json.dumps({**_public_jwk(RSA_KEY), "alg": "HS256"}), "cannot be used with a RSA key"),
        (json.dumps({"kty": "XYZ"}), "unsupported key type"),
    ],
)
def test_unusable_jwk_is_refused_at_startup(jwk: str, problem: str) -> None:
    with pytest.raises(KeyConfigError, match=problem):
        TokenVerifier(_auth(jwk=jwk), http=HttpClient(), custom_endpoints=False)


def test_two_key_options_are_refused() -> None:
    with pytest.raises(KeyConfigError, match="at most one"):
        TokenVerifier(_auth(secret=SECRET, jwks_url="http://x/jwks"), http=HttpClient(), custom_endpoints=False)


async def test_issuer_and_audience(http: HttpClient) -> None:
    verifier = TokenVerifier(_auth(secret=SECRET, issuer="https://issuer", audience="zero"), http=http, custom_endpoints=False)
    good = _claims(iss="https://issuer", aud=["other", "zero"])
    assert (await verifier.authenticate(_token(good), "u1")).claims == good
    for claims, message in (
        (_claims(iss="https://evil", aud="zero"), 'unexpected "iss" claim value'),
        (_claims(iss="https://issuer", aud="other"), 'unexpected "aud" claim value'),
        (_claims(aud="zero"), 'missing required "iss" claim'),
        (_claims(iss="https://issuer"), 'missing required "aud" claim'),
    ):
        error = await _refused(verifier, _token(claims))
        assert error.kind == "AuthInvalidated" and error.message.endswith(message)


async def test_connection_rules(http: HttpClient) -> None:
    jwt_verifier = TokenVerifier(_auth(secret=SECRET), http=http, custom_endpoints=False)
    assert await jwt_verifier.authenticate(None, None) == AuthData(None, None, None)
    assert await jwt_verifier.authenticate("", "u1") == AuthData(None, "u1", None)
    error = await _refused(jwt_verifier, _token(_claims()), user_id=None)
    assert (error.kind, error.message) == ("Unauthorized", "Authenticated connections require a userID.")
    error = await _refused(jwt_verifier, _token(_claims()), user_id="")
    assert (error.kind, error.message) == ("Unauthorized", "UserID is required for JWT validation.")

    opaque = TokenVerifier(_auth(), http=http, custom_endpoints=True)
    assert opaque.mode == "opaque"
    assert await opaque.authenticate("user:u1", "u1") == AuthData("user:u1", "u1", None)
    assert await opaque.verify("anything") == {}
    no_endpoints = TokenVerifier(_auth(), http=http, custom_endpoints=False)
    error = await _refused(no_endpoints, "user:u1")
    assert error.kind == "Internal" and error.message.startswith("Exactly one of jwk, secret, or jwksUrl must be set")
    assert await no_endpoints.authenticate(None, None) == AuthData(None, None, None)


async def test_update_auth_rules(http: HttpClient) -> None:
    verifier = TokenVerifier(_auth(secret=SECRET), http=http, custom_endpoints=True)
    now = int(time.time())
    first = await verifier.authenticate(_token(_claims(iat=now - 10)), "u1")
    newer = await verifier.authenticate(_token(_claims(iat=now)), "u1", previous=first)
    assert newer.claims is not None and newer.claims["iat"] == now
    older = await verifier.authenticate(_token(_claims(iat=now - 20)), "u1", previous=newer)
    assert older is newer  # the newest token wins
    error = await _refused(verifier, None, previous=newer)
    assert error.message == "No token provided. An unauthenticated client cannot connect to an authenticated client group."
    no_iat = {k: v for k, v in _claims().items() if k != "iat"}
    error = await _refused(verifier, _token(no_iat), previous=newer)
    assert error.kind == "Unauthorized" and error.message.startswith("The new token does not have an issued at time")
    logged_out = await verifier.authenticate(None, "u1")
    assert (await verifier.authenticate(_token(_claims()), "u1", previous=logged_out)).is_jwt

    opaque = TokenVerifier(_auth(), http=http, custom_endpoints=True)
    error = await _refused(opaque, "user:u1", previous=first)
    assert error.message == "Token type cannot change from JWT to opaque. Connections are pinned to a single token type."


def _jwks(*keys: dict[str, Any]) -> Reply:
    return Reply(body=json.dumps({"keys": list(keys)}).encode())


async def test_jwks_rotation_and_rate_limited_refetch(http_server: TestHttpServer, http: HttpClient, clock: trio.testing.MockClock) -> None:
    """The key set at a real URL changes: a token with a new kid makes zcache refetch it; an
    unknown kid refetches at most once per cooldown; a periodic refresh follows the set."""
    served = [_jwks(_public_jwk(RSA_KEY, kid="k1"))]
    http_server.route("/jwks", lambda _r: served[0])
    verifier = TokenVerifier(_auth(jwks_url=http_server.url("/jwks")), http=http, custom_endpoints=False)
    key_set = verifier.key_set
    assert key_set is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        assert (await verifier.authenticate(_token(_claims(), RSA_KEY, "RS256", kid="k1"), "u1")).is_jwt
        fetched = len(http_server.requests)

        # Rotation: the issuer starts signing with k2 and publishes it.
        served[0] = _jwks(_public_jwk(RSA_KEY, kid="k1"), _public_jwk(RSA_KEY_2, kid="k2"))
        await trio.sleep(31)  # past the cooldown of the start-up fetch
        assert (await verifier.authenticate(_token(_claims(), RSA_KEY_2, "RS256", kid="k2"), "u1")).is_jwt
        assert len(http_server.requests) == fetched + 1

        # Unknown kids: one refetch, then none within the 30 s cooldown.
        for _ in range(5):
            error = await _refused(verifier, _token(_claims(), RSA_KEY_2, "RS256", kid="k9"))
            assert error.message == "Failed to decode auth token: JWKSNoMatchingKey: no applicable key found in the JSON Web Key Set"
        assert len(http_server.requests) == fetched + 1  # the k2 fetch was < 30 s ago
        await trio.sleep(31)
        await _refused(verifier, _token(_claims(), RSA_KEY_2, "RS256", kid="k9"))
        assert len(http_server.requests) == fetched + 2

        # k1 is retired; the periodic refresh (10 min) drops it without any token asking.
        served[0] = _jwks(_public_jwk(RSA_KEY_2, kid="k2"))
        await trio.sleep(600)
        assert [k.kid for k in key_set.keys] == ["k2"]
        error = await _refused(verifier, _token(_claims(), RSA_KEY, "RS256", kid="k1"))
        assert "JWKSNoMatchingKey" in error.message
        nursery.cancel_scope.cancel()


async def test_jwks_endpoint_down_keeps_old_keys(http_server: TestHttpServer, http: HttpClient, clock: trio.testing.MockClock) -> None:
    http_server.route("/jwks", _jwks(_public_jwk(RSA_KEY, kid="k1")))
    verifier = TokenVerifier(_auth(jwks_url=http_server.url("/jwks")), http=http, custom_endpoints=False)
    key_set = verifier.key_set
    assert key_set is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        await verifier.authenticate(_token(_claims(), RSA_KEY, "RS256", kid="k1"), "u1")
        http_server.route("/jwks", Reply(status=503, body=b"down"))
        await trio.sleep(601)  # a periodic refresh fails
        assert key_set.last_error is not None and "503" in key_set.last_error
        assert (await verifier.authenticate(_token(_claims(), RSA_KEY, "RS256", kid="k1"), "u1")).is_jwt
        nursery.cancel_scope.cancel()


async def test_jwks_never_loaded(http: HttpClient) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"
    verifier = TokenVerifier(_auth(jwks_url=url), http=http, custom_endpoints=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        error = await _refused(verifier, _token(_claims(), RSA_KEY, "RS256", kid="k1"))
        assert error.kind == "AuthInvalidated"
        assert error.message.startswith("Failed to decode auth token: JOSEError: cannot load the JSON Web Key Set:")
        assert "cannot connect" in error.message
        nursery.cancel_scope.cancel()


async def test_jwks_ignores_symmetric_and_foreign_keys(http_server: TestHttpServer, http: HttpClient) -> None:
    oct_key = {"kty": "oct", "k": base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode(), "kid": "s"}
    http_server.route("/jwks", _jwks(oct_key, {**_public_jwk(RSA_KEY, kid="e"), "use": "enc"}, _public_jwk(EC_KEY, kid="ec")))
    verifier = TokenVerifier(_auth(jwks_url=http_server.url("/jwks")), http=http, custom_endpoints=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        assert "JWKSNoMatchingKey" in (await _refused(verifier, _token(_claims(), SECRET, "HS256", kid="s"))).message
        assert "JWKSNoMatchingKey" in (await _refused(verifier, _token(_claims(), RSA_KEY, "RS256", kid="e"))).message
        assert (await verifier.authenticate(_token(_claims(), EC_KEY, "ES256", kid="ec"), "u1")).is_jwt
        nursery.cancel_scope.cancel()
