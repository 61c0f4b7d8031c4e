"""Who a sync connection is, and what the legacy permissions let it read and write.

* `tokens`: `TokenVerifier` (JWT or opaque tokens, zero-cache's connection rules), `AuthData`,
  `AuthError`;
* `jwt_keys`: verification keys (secret, JWK, remote JWK set with refresh);
* `permissions`: the legacy read rules of `<app>.permissions` (`Permissions.bind_read`).
"""

from zcache.auth.tokens import AuthData, AuthError, TokenVerifier

__all__ = ["AuthData", "AuthError", "TokenVerifier"]
