"""The part of the WHATWG URLPattern syntax that `ZERO_MUTATE_URL` / `ZERO_QUERY_URL` use.

zero-cache compiles each configured URL with `new URLPattern(url)` and lets a client choose its
own push/query URL (`userPushURL`, `userQueryURL`) only if it matches one of them. Users write
full URLs with, at most, wildcards and named parameters:

* `https://api.example.com/endpoint`: that URL exactly (any query string and fragment);
* `https://*.example.com/endpoint`: `*` matches any text within its component (as in
  URLPattern, it may span dots or slashes);
* `https://api.example.com/:version/endpoint`: `:name` matches one segment (no `/` in the
  path, no `.` in the host).

As in URLPattern built from a string, a component the pattern leaves out after the path
(search, hash) and the credentials match anything, and a given query string must match
exactly; an absent port matches only the scheme's
default port. Protocol and host compare case-insensitively, the path case-sensitively.
Anything else of URLPattern (regex groups `(…)`, `{…}` groups, modifiers `?+*` after a
parameter, escapes) is refused when the pattern is compiled, so a pattern is never silently
read differently from zero-cache.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_UNSUPPORTED = set("(){}\\+?")


class UrlPatternError(ValueError):
    """A configured pattern uses syntax zcache does not implement, or is not a full URL."""


@dataclass(frozen=True)
class _Parts:
    scheme: str
    host: str
    port: str
    path: str
    search: str | None  # None: not given
    hash: str | None


def _split(url: str) -> _Parts | None:
    """Split a URL (or pattern) into components without interpreting wildcards."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return None
    rest, hash_sep, fragment = rest.partition("#")
    rest, search_sep, search = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, port = authority[: end + 1], authority[end + 1 :].removeprefix(":")
    else:
        # A leading ':' starts a host parameter (`:sub.example.com`), not the port.
        colon = authority.find(":", 1)
        host, port = (authority, "") if colon < 0 else (authority[:colon], authority[colon + 1 :])
    scheme = scheme.lower()
    if port == _DEFAULT_PORTS.get(scheme):
        port = ""
    return _Parts(
        scheme=scheme,
        host=host.lower(),
        port=port,
        path=path,
        search=search if search_sep else None,
        hash=fragment if hash_sep else None,
    )


def _component_regex(pattern: str, segment_class: str, what: str, full: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
            i += 1
        elif char == ":":
            name = _NAME.match(pattern, i + 1)
            if name is None:
                raise UrlPatternError(f"invalid URL pattern {full!r}: ':' must start a parameter name")
            out.append(f"{segment_class}+")
            i = name.end()
        elif char in _UNSUPPORTED:
            raise UrlPatternError(
                f"URL pattern {full!r}: {char!r} in the {what} is URLPattern syntax zcache does"
                " not support (only exact text, '*' and ':name' are)"
            )
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def _optional(component: str | None, what: str, full: str) -> re.Pattern[str] | None:
    if component is None:
        return None
    return re.compile(_component_regex(component, ".", what, full))


class UrlPattern:
    """One compiled pattern; `matches(url)` is URLPattern's `test(url)` for the subset above."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts = _split(pattern)
        if parts is None or not parts.host:
            raise UrlPatternError(
                f"invalid URL pattern {pattern!r}: expected a full URL such as"
                " https://api.example.com/endpoint"
            )
        self._scheme = re.compile(_component_regex(parts.scheme, "[^:]", "scheme", pattern))
        self._host = re.compile(_component_regex(parts.host, r"[^.]", "host", pattern))
        self._port = re.compile(_component_regex(parts.port, "[0-9]", "port", pattern))
        self._path = re.compile(_component_regex(parts.path, "[^/]", "path", pattern))
        self._search = _optional(parts.search, "query string", pattern)
        self._hash = _optional(parts.hash, "fragment", pattern)

    def matches(self, url: str) -> bool:
        parts = _split(url)
        if parts is None:
            return False
        path = urllib.parse.quote(parts.path, safe="/:@!$&'()*+,;=-._~%")
        return bool(
            self._scheme.fullmatch(parts.scheme)
            and self._host.fullmatch(parts.host)
            and self._port.fullmatch(parts.port)
            and self._path.fullmatch(path)
            and (self._search is None or self._search.fullmatch(parts.search or ""))
            and (self._hash is None or self._hash.fullmatch(parts.hash or ""))
        )

    def __repr__(self) -> str:
        return f"UrlPattern({self.pattern!r})"
