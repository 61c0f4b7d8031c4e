"""Verification keys for JWTs: one static key (secret or JWK) or a remote JWK set.

Reproduces what zero-cache 1.9 gets from `jose` (`zero-cache/src/auth/jwt.ts`):
`ZERO_AUTH_SECRET` is an HMAC key, `ZERO_AUTH_JWK` one JSON Web Key, `ZERO_AUTH_JWKS_URL` a
key set fetched over HTTP (jose's `createRemoteJWKSet`). zcache is stricter than jose where
jose trusts the token header:

* Each key has an algorithm allow-list derived from the key itself, never from the token:
  a secret or `oct` JWK allows HS256/384/512 only; an RSA key RS* and PS*; an EC key the ES
  algorithm of its curve; an OKP key EdDSA; a JWK with `alg` exactly that. `none` is never
  allowed, and an HMAC algorithm is never tried with a public key (algorithm confusion).
* A JWK that is private (`d`), or marked for another use than `sig`, is refused at startup;
  symmetric keys in a remote key set are ignored (a key set URL is public).

The remote key set (`RemoteKeySet`) is fetched with the process's `HttpClient`:
* `run()` loads it at startup and refreshes it every `refresh_interval_s` (10 minutes, jose's
  `cacheMaxAge`); a failed fetch keeps the previous keys and is logged.
* A token whose `kid`/algorithm matches no key triggers one refetch, at most once per
  `cooldown_s` (30 s, jose's `cooldownDuration`); concurrent requests share one fetch.
  Fetches are plain Trio I/O bounded by `fetch_timeout_s` (5 s, jose's `timeoutDuration`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import trio

from zcache.app_server.http import HttpClient, HttpError

log = logging.getLogger("zcache.auth")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",)}
JWKS_REFRESH_INTERVAL_S = 600.0
JWKS_COOLDOWN_S = 30.0
JWKS_FETCH_TIMEOUT_S = 5.0


class KeyConfigError(ValueError):
    """A configured key (secret, JWK, key set) cannot be used; the message says why."""


@dataclass(frozen=True)
class VerificationKey:
    """A key and the algorithms it may verify."""

    key: Any  # bytes for HMAC, else a `cryptography` public key
    algorithms: tuple[str, ...]
    kid: str | None = None


def secret_key(secret: str) -> VerificationKey:
    if len(secret.encode()) < 32:
        log.warning(
            "ZERO_AUTH_SECRET is shorter than 32 bytes: HMAC tokens signed with it are easy to forge"
        )
    return VerificationKey(secret.encode(), HMAC_ALGORITHMS)


def _allowed_algorithms(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    kty = jwk.get("kty")
    if kty == "oct":
        family: tuple[str, ...] = HMAC_ALGORITHMS
    elif kty == "RSA":
        family = RSA_ALGORITHMS
    elif kty == "EC":
        family = EC_ALGORITHMS.get(str(jwk.get("crv")), ())
    elif kty == "OKP":
        family = ("EdDSA",) if jwk.get("crv") in ("Ed25519", "Ed448") else ()
    else:
        family = ()
    if not family:
        raise KeyConfigError(f"unsupported key type {kty!r} (curve {jwk.get('crv')!r})")
    alg = jwk.get("alg")
    if alg is None:
        return family
    if alg not in family:
        raise KeyConfigError(f"its alg {alg!r} cannot be used with a {kty} key")
    return (alg,)


def jwk_key(jwk: Mapping[str, Any], *, allow_symmetric: bool = True) -> VerificationKey:
    """A verification key from one JWK; raises `KeyConfigError`."""
    if not isinstance(jwk, Mapping):
        raise KeyConfigError("a JWK must be a JSON object")
    if "d" in jwk:
        raise KeyConfigError('it is a private key (it has "d"); configure the public key')
    if jwk.get("use") not in (None, "sig"):
        raise KeyConfigError(f"its use is {jwk.get('use')!r}, not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and "verify" not in key_ops:
        raise KeyConfigError("its key_ops do not include 'verify'")
    if jwk.get("kty") == "oct" and not allow_symmetric:
        raise KeyConfigError("symmetric keys are not accepted from a key set")
    algorithms = _allowed_algorithms(jwk)
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=algorithms[0]).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise KeyConfigError(f"invalid key material: {exc}") from None
    kid = jwk.get("kid")
    return VerificationKey(key, algorithms, kid if isinstance(kid, str) else None)


def parse_jwk(text: str) -> VerificationKey:
    """`ZERO_AUTH_JWK`: one public JWK as JSON; raises `KeyConfigError`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyConfigError(f"ZERO_AUTH_JWK is not JSON: {exc}") from None
    try:
        return jwk_key(value)
    except KeyConfigError as exc:
        raise KeyConfigError(f"ZERO_AUTH_JWK cannot be used: {exc}") from None


def parse_key_set(body: bytes, url: str) -> list[VerificationKey]:
    """The usable keys of a JWK set document; unusable entries are skipped with a log line."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyConfigError(f"the JWK set at {url} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyConfigError(f'the JWK set at {url} has no "keys" array')
    keys: list[VerificationKey] = []
    for index, entry in enumerate(document["keys"]):
        try:
            keys.append(jwk_key(entry, allow_symmetric=False))
        except KeyConfigError as exc:
            log.info("ignoring key %d (kid %r) of the JWK set at %s: %s", index, _kid(entry), url, exc)
    return keys


def _kid(entry: Any) -> Any:
    return entry.get("kid") if isinstance(entry, dict) else None


def candidates(keys: list[VerificationKey], alg: str, kid: str | None) -> list[VerificationKey]:
    """jose's key selection: same algorithm family, and the same `kid` when the token has one."""
    return [k for k in keys if alg in k.algorithms and (kid is None or k.kid == kid)]


class RemoteKeySet:
    """The keys at `ZERO_AUTH_JWKS_URL`, refreshed as the module docstring says."""

    def __init__(
        self,
        url: str,
        *,
        http: HttpClient,
        refresh_interval_s: float = JWKS_REFRESH_INTERVAL_S,
        cooldown_s: float = JWKS_COOLDOWN_S,
        fetch_timeout_s: float = JWKS_FETCH_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._http = http
        self._refresh_interval_s = refresh_interval_s
        self._cooldown_s = cooldown_s
        self._fetch_timeout_s = fetch_timeout_s
        self.keys: list[VerificationKey] = []
        self.loaded = False
        self.last_error: str | None = None
        self._last_attempt: float | None = None
        self._fetching = trio.Lock()
        self.fetches = 0  # attempts so far, for tests and diagnostics

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load now, then refresh periodically; runs until cancelled."""
        task_status.started()
        while True:
            await self._fetch()
            await trio.sleep(self._refresh_interval_s)

    async def keys_for(self, alg: str, kid: str | None) -> list[VerificationKey]:
        """Candidate keys for a token; refetches once (rate-limited) when none matches."""
        found = candidates(self.keys, alg, kid)
        if found:
            return found
        attempt = self._last_attempt
        if self._fetching.locked():
            async with self._fetching:
                pass  # someone is fetching: wait for their result
        elif attempt is None or trio.current_time() - attempt >= self._cooldown_s:
            await self._fetch()
        return candidates(self.keys, alg, kid)

    async def _fetch(self) -> None:
        async with self._fetching:
            self._last_attempt = trio.current_time()
            self.fetches += 1
            try:
                response = await self._http.request(
                    "GET", self.url, headers=[("Accept", "application/json")], timeout_s=self._fetch_timeout_s
                )
                if response.status != 200:
                    raise KeyConfigError(
                        f"Expected 200 OK from the JSON Web Key Set HTTP response, got {response.status}"
                    )
                keys = parse_key_set(response.body, self.url)
            except (HttpError, KeyConfigError) as exc:
                self.last_error = str(exc)
                log.warning("cannot refresh the JWK set from %s (keeping %d keys): %s", self.url, len(self.keys), exc)
                return
            self.keys = keys
            self.loaded = True
            self.last_error = None
            log.debug("loaded %d keys from the JWK set at %s", len(keys), self.url)
