"""Auth tokens of sync connections: JWT verification and zero-cache's connection rules.

Reproduces zero-cache 1.9 (`zero-cache/src/auth/auth.ts` `resolveAuth`/`pickToken`,
`auth/jwt.ts`, the token checks of `workers/syncer.ts` and `server/syncer.ts`;
docs/zero-protocol.md §8):

* Mode: `jwt` when exactly one of `ZERO_AUTH_SECRET` / `ZERO_AUTH_JWK` / `ZERO_AUTH_JWKS_URL`
  is set (the deprecated path that CRUD mutations and legacy permissions need); otherwise
  tokens are `opaque`: forwarded to the app server, which is the authority. An opaque token is
  accepted only when both a push URL and a query URL are configured; otherwise a connection
  with a token fails with zero-cache's configuration message (kind `Internal` here; zero-cache
  throws it as a plain error).
* No token (absent or empty): the connection is logged out, unless it replaces an
  authenticated one (`Unauthorized` "No token provided. An unauthenticated client cannot
  connect to an authenticated client group.").
* A token needs a `userID` URL parameter (`Unauthorized` "Authenticated connections require a
  userID."); in JWT mode an empty userID is refused too ("UserID is required for JWT
  validation.").
* JWT checks, in jose's order: compact form and header, algorithm allowed for the key (see
  `jwt_keys`), signature, claims object, `iss` (when `ZERO_AUTH_ISSUER` is set), `sub` equal to
  the userID, `aud` (when `ZERO_AUTH_AUDIENCE` is set), `iat` a number, `nbf`, `exp` (no clock
  tolerance). Any failure is `AuthInvalidated` with zero-cache's message, "Failed to decode
  auth token: <jose error name>: <jose message>", e.g.
  `Failed to decode auth token: JWTExpired: "exp" claim timestamp check failed`.
* Token updates (`updateAuth`, `previous=`): a JWT replaces a JWT only for the same `sub`, the
  newer `iat` wins (`Unauthorized` when only the old one has an `iat`); the token type of a
  connection never changes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import jwt
import trio

from zcache.app_server.http import HttpClient
from zcache.auth.jwt_keys import (
    KeyConfigError,
    RemoteKeySet,
    VerificationKey,
    candidates,
    parse_jwk,
    secret_key,
)
from zcache.config import AuthConfig, ZeroConfig

ErrorKind = Literal["Unauthorized", "AuthInvalidated", "Internal"]


class AuthError(Exception):
    """A connection's auth is refused; `kind` and `message` form the client's `error` body.

    `kind` is `Unauthorized` or `AuthInvalidated` (§7.4), or `Internal` for the configuration
    problem described in the module docstring.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message

    def error_body(self) -> dict[str, Any]:
        """The `["error", body]` body zero-cache sends before closing (code 3000)."""
        return {"kind": self.kind, "message": self.message, "origin": "zeroCache"}


@dataclass(frozen=True)
class AuthData:
    """A connection's resolved auth. `claims` is None for opaque tokens and logged-out users."""

    token: str | None
    user_id: str | None
    claims: dict[str, Any] | None

    @property
    def is_jwt(self) -> bool:
        return self.claims is not None


class _JoseError(Exception):
    """A verification failure, named as jose names it (the name is part of the message)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise _JoseError("JWSInvalid", "Invalid Compact JWS")
    try:
        header = json.loads(_b64decode(parts[0]))
    except (binascii.Error, ValueError):
        raise _JoseError("JWSInvalid", "JWS Protected Header is invalid") from None
    if not isinstance(header, dict):
        raise _JoseError("JWSInvalid", "JWS Protected Header is invalid")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _JoseError("JWSInvalid", 'JWS "alg" (Algorithm) Header Parameter missing or invalid')
    return header


def _verify_signature(token: str, alg: str, keys: list[VerificationKey]) -> bytes:
    """The payload bytes if one of `keys` verifies the token with `alg`."""
    for key in keys:
        try:
            with warnings.catch_warnings():
                # Short HMAC secrets are logged once at startup; zero-cache accepts them too.
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                decoded = jwt.api_jws.PyJWS().decode_complete(token, key=key.key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            raise _JoseError("JWSInvalid", str(exc)) from None
        payload = decoded["payload"]
        assert isinstance(payload, bytes)
        return payload
    raise _JoseError("JWSSignatureVerificationFailed", "signature verification failed")


def _check_claims(
    payload: bytes, *, subject: str | None, issuer: str | None, audience: str | None
) -> dict[str, Any]:
    """jose's `jwtPayload` checks with the options zero-cache passes (no `sub` check without
    a subject)."""
    try:
        claims = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        claims = None
    if not isinstance(claims, dict):
        raise _JoseError("JWTInvalid", "JWT Claims Set must be a top-level JSON object")
    required = ["iss"] if issuer else []
    if subject is not None:
        required.append("sub")
    if audience:
        required.append("aud")
    for claim in required:
        if claim not in claims:
            raise _JoseError("JWTClaimValidationFailed", f'missing required "{claim}" claim')
    if issuer and claims["iss"] != issuer:
        raise _JoseError("JWTClaimValidationFailed", 'unexpected "iss" claim value')
    if subject is not None and claims["sub"] != subject:
        raise _JoseError("JWTClaimValidationFailed", 'unexpected "sub" claim value')
    if audience:
        aud = claims["aud"]
        if not (aud == audience or (isinstance(aud, list) and audience in aud)):
            raise _JoseError("JWTClaimValidationFailed", 'unexpected "aud" claim value')
    now = math.floor(time.time())
    if "iat" in claims and not _is_number(claims["iat"]):
        raise _JoseError("JWTClaimValidationFailed", '"iat" claim must be a number')
    if "nbf" in claims:
        if not _is_number(claims["nbf"]):
            raise _JoseError("JWTClaimValidationFailed", '"nbf" claim must be a number')
        if claims["nbf"] > now:
            raise _JoseError("JWTClaimValidationFailed", '"nbf" claim timestamp check failed')
    if "exp" in claims:
        if not _is_number(claims["exp"]):
            raise _JoseError("JWTClaimValidationFailed", '"exp" claim must be a number')
        if claims["exp"] <= now:
            raise _JoseError("JWTExpired", '"exp" claim timestamp check failed')
    return claims


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unauthorized(message: str) -> AuthError:
    return AuthError("Unauthorized", message)


class TokenVerifier:
    """Verifies connection tokens; see the module docstring. One per process.

    Construction raises `KeyConfigError` for an unusable key or more than one key option.

    In JWKS mode `run()` owns the key-set refresh task and must be started
    (`await nursery.start(verifier.run)`) before tokens are verified; in the other modes it
    returns at once.
    """

    def __init__(self, config: AuthConfig, *, http: HttpClient, custom_endpoints: bool) -> None:
        """`custom_endpoints`: both a push URL and a query URL are configured."""
        configured = [v for v in (config.secret, config.jwk, config.jwks_url) if v is not None]
        if len(configured) > 1:
            # zero-cache silently falls back to opaque tokens; a typo should not disable JWTs.
            raise KeyConfigError(
                "set at most one of ZERO_AUTH_SECRET, ZERO_AUTH_JWK and ZERO_AUTH_JWKS_URL"
            )
        self.mode: Literal["jwt", "opaque"] = "jwt" if configured else "opaque"
        self._issuer = config.issuer or None
        self._audience = config.audience or None
        self._custom_endpoints = custom_endpoints
        self._static_keys: list[VerificationKey] = []
        self.key_set: RemoteKeySet | None = None
        if self.mode == "jwt":
            if config.secret is not None:
                self._static_keys = [secret_key(config.secret)]
            elif config.jwk is not None:
                self._static_keys = [parse_jwk(config.jwk)]
            else:
                assert config.jwks_url is not None
                self.key_set = RemoteKeySet(config.jwks_url, http=http)

    @classmethod
    def from_config(cls, config: ZeroConfig, *, http: HttpClient) -> TokenVerifier:
        return cls(config.auth, http=http, custom_endpoints=bool(config.mutate.url and config.query.url))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the JWK set fresh (JWKS mode); otherwise nothing to do."""
        if self.key_set is None:
            task_status.started()
            return
        await self.key_set.run(task_status=task_status)

    async def verify(self, token: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The claims of a valid JWT (whose `sub` is `user_id` if given); `{}` in opaque mode.

        Raises `AuthError("AuthInvalidated", "Failed to decode auth token: …")`.
        """
        if self.mode == "opaque":
            return {}
        try:
            header = _header(token)
            alg = header["alg"]
            kid = header.get("kid") if isinstance(header.get("kid"), str) else None
            keys = await self._keys(alg, kid)
            payload = _verify_signature(token, alg, keys)
            return _check_claims(payload, subject=user_id, issuer=self._issuer, audience=self._audience)
        except _JoseError as exc:
            raise AuthError("AuthInvalidated", f"Failed to decode auth token: {exc}") from None

    async def _keys(self, alg: str, kid: str | None) -> list[VerificationKey]:
        if self.key_set is None:
            keys = candidates(self._static_keys, alg, None)
            if not keys:
                raise _JoseError("JOSEAlgNotAllowed", '"alg" (Algorithm) Header Parameter value not allowed')
            return keys
        keys = await self.key_set.keys_for(alg, kid)
        if keys:
            return keys
        if not self.key_set.loaded and self.key_set.last_error:
            raise _JoseError("JOSEError", f"cannot load the JSON Web Key Set: {self.key_set.last_error}")
        raise _JoseError("JWKSNoMatchingKey", "no applicable key found in the JSON Web Key Set")

    async def authenticate(
        self, token: str | None, user_id: str | None, *, previous: AuthData | None = None
    ) -> AuthData:
        """The connection rules of the module docstring; `previous` for `updateAuth`.

        Raises `AuthError`.
        """
        provided = bool(token)
        if provided and self.mode == "opaque" and not self._custom_endpoints:
            raise AuthError(
                "Internal",
                "Exactly one of jwk, secret, or jwksUrl must be set in order to verify tokens but"
                " actually the following were set: []."
                " You may also set both ZERO_MUTATE_URL and ZERO_QUERY_URL to enable custom"
                " mutations and queries without passing token verification options.",
            )
        had_token = previous is not None and previous.token is not None
        if not provided:
            if had_token:
                raise _unauthorized(
                    "No token provided. An unauthenticated client cannot connect to an"
                    " authenticated client group."
                )
            return AuthData(token=None, user_id=user_id, claims=None)
        assert token is not None
        if user_id is None:
            raise _unauthorized("Authenticated connections require a userID.")
        if self.mode == "jwt":
            if not user_id:
                raise _unauthorized("UserID is required for JWT validation.")
            claims = await self.verify(token, user_id=user_id)
            return _pick_token(previous if had_token else None, AuthData(token, user_id, claims))
        if previous is not None and previous.is_jwt:
            raise _unauthorized(
                "Token type cannot change from JWT to opaque. Connections are pinned to a single token type."
            )
        return AuthData(token=token, user_id=user_id, claims=None)


def _pick_token(previous: AuthData | None, new: AuthData) -> AuthData:
    """zero-cache's `pickToken` for a newly verified JWT."""
    if previous is None:
        return new
    if not previous.is_jwt:
        raise _unauthorized(
            "Token type cannot change from opaque to JWT. Client groups are pinned to a single token type."
        )
    assert previous.claims is not None and new.claims is not None
    if previous.claims.get("sub") != new.claims.get("sub"):
        raise _unauthorized(
            "The user id in the new token does not match the previous token. Client groups are"
            " pinned to a single user."
        )
    old_iat = previous.claims.get("iat")
    if old_iat is None:
        return new
    new_iat = new.claims.get("iat")
    if new_iat is None:
        raise _unauthorized(
            "The new token does not have an issued at time but the prior token does. Tokens for a"
            " client group must either all have issued at times or all not have issued at times"
        )
    return new if old_iat < new_iat else previous
