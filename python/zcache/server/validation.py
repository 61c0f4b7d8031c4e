"""Strict validation of parsed JSON against declarative schemas, with zero-cache's error texts.

zero-cache 1.9 validates every upstream message with `@badrap/valita` in strict mode (unknown
object keys are errors) and turns the *first* issue into the message of an `InvalidMessage`
error (`TypeError: Expected array. Got object`). Clients only show that text, but operators
compare it with zero-cache's, so this module reproduces the semantics that decide which issue
comes first and how it is worded:

* objects report, in this order: the first invalid known property (in JavaScript key order:
  integer-like keys ascending, then insertion order), the first missing required property
  (required keys in declaration order), then every unrecognized key at once;
* tuples and arrays report a wrong length before their first invalid element;
* a union picks its candidate options by the value's JavaScript type, or by a discriminating
  key when its object options have one (`op`, `type`); one failing candidate reports its own
  issue, several report `invalid_union`, which the message then resolves to the failing option
  with the deepest path (or `Invalid union value: <JSON>` when two tie).

Only the first issue is computed: validation stops there, so a hostile message costs no more
than the prefix that is wrong. Values are what `json.loads` returns; `MISSING` stands for
JavaScript's `undefined` (an absent property).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

MISSING: Final = type("Missing", (), {"__repr__": lambda self: "undefined"})()

PathKey = str | int
Path = tuple[PathKey, ...]


def js_type(value: Any) -> str:
    """JavaScript's view of a JSON value's type (`typeof`, with `null` and `array` split out)."""
    if value is MISSING:
        return "undefined"
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


@dataclass(frozen=True)
class Issue:
    """The first problem found, located by its path from the validated root."""

    code: str  # invalid_type | invalid_literal | missing_value | invalid_length | unrecognized_keys | invalid_union
    path: Path
    expected: tuple[Any, ...] = ()  # type names (invalid_type) or literal values (invalid_literal)
    keys: tuple[str, ...] = ()  # unrecognized_keys
    min_length: int = 0
    max_length: int | None = None  # None: unbounded (JavaScript prints `undefined`)


class Schema:
    """A validator. `name` is the terminal kind that unions group options by."""

    name: str = ""

    def check(self, value: Any, path: Path) -> Issue | None:
        """The first issue of `value` at `path`, or None when it is valid."""
        raise NotImplementedError

    def terminals(self) -> Iterator[Schema]:
        yield self

    def optional(self) -> Optional:
        return Optional(self)


class _Primitive(Schema):
    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, value: Any, path: Path) -> Issue | None:
        return None if js_type(value) == self.name else Issue("invalid_type", path, (self.name,))


STRING: Final = _Primitive("string")
NUMBER: Final = _Primitive("number")
BOOLEAN: Final = _Primitive("boolean")
NULL: Final = _Primitive("null")
UNDEFINED: Final = _Primitive("undefined")


class _Unknown(Schema):
    name = "unknown"

    def check(self, value: Any, path: Path) -> Issue | None:
        return None


UNKNOWN: Final = _Unknown()


class _Never(Schema):
    name = "never"

    def check(self, value: Any, path: Path) -> Issue | None:
        return Issue("invalid_type", path, ())


NEVER: Final = _Never()


class Literal(Schema):
    name = "literal"

    def __init__(self, value: str | int | float | bool) -> None:
        self.value = value

    def check(self, value: Any, path: Path) -> Issue | None:
        if js_type(value) == js_type(self.value) and value == self.value:
            return None
        return Issue("invalid_literal", path, (self.value,))


class Optional(Schema):
    """An object property that may be absent. Its terminals include `undefined`."""

    name = "optional"

    def __init__(self, inner: Schema) -> None:
        self.inner = inner

    def check(self, value: Any, path: Path) -> Issue | None:
        return None if value is MISSING else self.inner.check(value, path)

    def terminals(self) -> Iterator[Schema]:
        yield self
        yield UNDEFINED
        yield from self.inner.terminals()

    def optional(self) -> Optional:
        return self


class Lazy(Schema):
    """A schema defined later (recursive ASTs)."""

    def __init__(self, define: Callable[[], Schema]) -> None:
        self._define = define
        self._schema: Schema | None = None
        self._recursing = False

    @property
    def schema(self) -> Schema:
        if self._schema is None:
            self._schema = self._define()
        return self._schema

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.schema.name

    def check(self, value: Any, path: Path) -> Issue | None:
        return self.schema.check(value, path)

    def terminals(self) -> Iterator[Schema]:
        if self._recursing:
            return
        self._recursing = True
        try:
            yield from self.schema.terminals()
        finally:
            self._recursing = False


_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")


def js_keys(obj: dict[str, Any]) -> list[str]:
    """Keys in JavaScript's own-property order: array indices ascending, then insertion order."""
    indices = [k for k in obj if _ARRAY_INDEX.fullmatch(k) and int(k) <= 4294967294]
    if not indices:
        return list(obj)
    index_set = set(indices)
    return sorted(indices, key=int) + [k for k in obj if k not in index_set]


class Object(Schema):
    """A strict object: declared properties, or any key with `rest` (a record)."""

    name = "object"

    def __init__(self, shape: dict[str, Schema], rest: Schema | None = None) -> None:
        self.shape = shape
        self.rest = rest
        self._required: list[str] | None = None  # computed on first use: shapes may be recursive

    @property
    def required(self) -> list[str]:
        """Keys that must be present, in declaration order."""
        if self._required is None:
            self._required = [k for k, s in self.shape.items() if not any(t.name == "optional" for t in s.terminals())]
        return self._required

    def extend(self, shape: dict[str, Schema]) -> Object:
        return Object({**self.shape, **shape}, self.rest)

    def check(self, value: Any, path: Path) -> Issue | None:
        if not isinstance(value, dict):
            return Issue("invalid_type", path, ("object",))
        unrecognized: list[str] = []
        for key in js_keys(value):
            schema = self.shape.get(key, self.rest)
            if schema is None:
                unrecognized.append(key)
                continue
            issue = schema.check(value[key], (*path, key))
            if issue is not None:
                return issue
        for key in self.required:
            if key not in value:
                return Issue("missing_value", (*path, key))
        if unrecognized:
            return Issue("unrecognized_keys", path, keys=tuple(unrecognized))
        return None


def record(values: Schema) -> Object:
    return Object({}, values)


class Array(Schema):
    """A tuple (`prefix` only), an array (`rest` only), or a non-empty array (both)."""

    name = "array"

    def __init__(self, prefix: Sequence[Schema] = (), rest: Schema | None = None) -> None:
        self.prefix = tuple(prefix)
        self.rest = rest
        self.min_length = len(self.prefix)
        self.max_length = None if rest is not None else self.min_length

    def check(self, value: Any, path: Path) -> Issue | None:
        if not isinstance(value, list):
            return Issue("invalid_type", path, ("array",))
        if len(value) < self.min_length or (self.max_length is not None and len(value) > self.max_length):
            return Issue("invalid_length", path, min_length=self.min_length, max_length=self.max_length)
        for i, item in enumerate(value):
            schema = self.prefix[i] if i < len(self.prefix) else self.rest
            assert schema is not None
            issue = schema.check(item, (*path, i))
            if issue is not None:
                return issue
        return None


def array(items: Schema) -> Array:
    return Array((), items)


def tuple_(*items: Schema) -> Array:
    return Array(items)


def _literal_key(value: Any) -> tuple[str, Any] | None:
    if isinstance(value, (dict, list)):
        return None
    return (js_type(value), value)


@dataclass
class _Groups:
    types: dict[str, list[Schema]]
    literals: dict[tuple[str, Any], list[Schema]]
    unknowns: list[Schema]
    optionals: list[Schema]
    expected_types: list[str]


def _dedup(roots: list[Schema]) -> list[Schema]:
    seen: set[int] = set()
    out = []
    for root in roots:
        if id(root) not in seen:
            seen.add(id(root))
            out.append(root)
    return out


def _group(pairs: list[tuple[Schema, Schema]]) -> _Groups:
    order: dict[int, int] = {}
    types: dict[str, list[Schema]] = {}
    literals: dict[tuple[str, Any], list[Schema]] = {}
    unknowns: list[Schema] = []
    optionals: list[Schema] = []
    expected: list[str] = []
    for root, terminal in pairs:
        order.setdefault(id(root), len(order))
        if terminal.name == "never":
            continue
        if terminal.name == "optional":
            optionals.append(root)
        elif terminal.name == "unknown":
            unknowns.append(root)
        elif isinstance(terminal, Literal):
            literals.setdefault((js_type(terminal.value), terminal.value), []).append(root)
            expected.append(js_type(terminal.value))
        else:
            types.setdefault(terminal.name, []).append(root)
            expected.append(terminal.name)
    # A literal whose type is also accepted as a whole is checked by that type's options.
    for key in [k for k in literals if k[0] in types]:
        types[key[0]].extend(literals.pop(key))

    def by_order(roots: list[Schema]) -> list[Schema]:
        return _dedup(sorted(roots, key=lambda r: order.get(id(r), 0)))

    return _Groups(
        types={name: by_order(roots + unknowns) for name, roots in types.items()},
        literals={key: by_order(roots + unknowns) for key, roots in literals.items()},
        unknowns=by_order(unknowns),
        optionals=by_order(optionals),
        expected_types=list(dict.fromkeys(expected)),
    )


class Union(Schema):
    name = "union"

    def __init__(self, *options: Schema) -> None:
        self.options = options
        self._matcher: Callable[[Any, Path], Issue | None] | None = None

    def terminals(self) -> Iterator[Schema]:
        for option in self.options:
            yield from option.terminals()

    def check(self, value: Any, path: Path) -> Issue | None:
        if self._matcher is None:
            pairs = [(option, terminal) for option in self.options for terminal in option.terminals()]
            base = _base_matcher(pairs)
            by_key = _object_matcher(pairs)
            if by_key is None:
                self._matcher = base
            else:
                self._matcher = lambda v, p: by_key(v, p) if isinstance(v, dict) else base(v, p)
        return self._matcher(value, path)


def literal_union(*values: str) -> Union:
    return Union(*(Literal(v) for v in values))


def _base_matcher(pairs: list[tuple[Schema, Schema]]) -> Callable[[Any, Path], Issue | None]:
    groups = _group(pairs)
    by_literal = not groups.types and not groups.unknowns
    expected: tuple[Any, ...] = tuple(k[1] for k in groups.literals) if by_literal else tuple(groups.expected_types)

    def match(value: Any, path: Path) -> Issue | None:
        if value is MISSING:
            options = groups.optionals
        else:
            options = groups.types.get(js_type(value))
            if options is None:
                key = _literal_key(value)
                options = groups.literals.get(key) if key is not None else None
            if options is None:
                options = groups.unknowns
        if not options:
            return Issue("invalid_literal" if by_literal else "invalid_type", path, expected)
        first: Issue | None = None
        for count, option in enumerate(options):
            issue = option.check(value, path)
            if issue is None:
                return None
            if count == 0:
                first = issue
        return first if len(options) == 1 else Issue("invalid_union", path)

    return match


def _object_matcher(pairs: list[tuple[Schema, Schema]]) -> Callable[[Any, Path], Issue | None] | None:
    """A matcher that picks the one object option named by a discriminating key, if any."""
    if any(t.name == "unknown" for _, t in pairs):
        return None
    objects = [(root, t) for root, t in pairs if isinstance(t, Object)]
    if len(objects) < 2:
        return None
    common = [k for k in objects[0][1].shape if all(k in t.shape for _, t in objects)]
    for key in common:
        matcher = _key_matcher(objects, key)
        if matcher is not None:
            return matcher
    return None


def _key_matcher(objects: list[tuple[Schema, Object]], key: str) -> Callable[[Any, Path], Issue | None] | None:
    groups = _group([(root, t) for root, obj in objects for t in obj.shape[key].terminals()])
    if groups.unknowns or len(groups.optionals) > 1:
        return None
    if any(len(roots) > 1 for roots in groups.literals.values()) or any(len(r) > 1 for r in groups.types.values()):
        return None
    by_type = {name: roots[0] for name, roots in groups.types.items()}
    by_literal = {lit: roots[0] for lit, roots in groups.literals.items()}

    def match(value: dict[str, Any], path: Path) -> Issue | None:
        if key not in value:
            if groups.optionals:
                return groups.optionals[0].check(value, path)
            return Issue("missing_value", (*path, key))
        found = value[key]
        option = by_type.get(js_type(found))
        if option is None:
            lit = _literal_key(found)
            option = by_literal.get(lit) if lit is not None else None
        if option is None:
            if groups.types:
                return Issue("invalid_type", (*path, key), tuple(groups.expected_types))
            return Issue("invalid_literal", (*path, key), tuple(k[1] for k in groups.literals))
        return option.check(value, path)

    return match


# --- messages, worded as zero-cache's `shared/src/valita.ts` words them -----------------


def js_number(value: int | float) -> str:
    """`String(n)` / `JSON.stringify(n)` of a JavaScript number (a double): shortest digits,
    plain notation for decimal exponents from -6 to 20, exponent notation outside."""
    x = float(value)
    if math.isinf(x) or math.isnan(x):
        return "null"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    raw = whole + frac
    point = len(whole) + int(exp or 0)
    lead = len(raw) - len(raw.lstrip("0"))
    digits = raw.strip("0")
    n, k = point - lead, len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{sign}{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return f"{sign}0.{'0' * -n}{digits}"
    rest = f".{digits[1:]}" if k > 1 else ""
    return f"{sign}{digits[0]}{rest}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_lone_surrogates(json_text: str) -> str:
    """JSON text with lone surrogates written as `\\udXXX` escapes, as JSON.stringify writes them
    (a Python str from JSON may hold them; UTF-8 cannot)."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


def js_stringify(value: Any) -> str:
    """`JSON.stringify(value)`: compact, JavaScript key order and number forms, lone surrogates escaped."""
    if value is MISSING:
        return "undefined"
    kind = js_type(value)
    if kind == "number":
        return js_number(value)
    if kind == "string":
        return escape_lone_surrogates(json.dumps(value, ensure_ascii=False))
    if kind == "array":
        return "[" + ",".join(js_stringify(v) for v in value) + "]"
    if kind == "object":
        return "{" + ",".join(f"{js_stringify(k)}:{js_stringify(value[k])}" for k in js_keys(value)) + "}"
    return json.dumps(value)


def _display(value: Any) -> str:
    kind = js_type(value)
    if kind in ("string", "number", "boolean"):
        return js_stringify(value)
    if kind in ("undefined", "null", "array"):
        return kind
    return "object"


def _display_at(root: Any, path: Path) -> str:
    current = root
    for key in path:
        if isinstance(current, dict) and isinstance(key, str):
            current = current.get(key, MISSING)
        elif isinstance(current, list) and isinstance(key, int) and 0 <= key < len(current):
            current = current[key]
        else:
            return "undefined"
    return _display(current)


def _display_list(word: str, items: Sequence[Any], show: Callable[[Any], str] = str) -> str:
    if len(items) == 1:
        return show(items[0])
    last_two = [show(items[i]) if -len(items) <= i else "undefined" for i in (-2, -1)]
    suffix = f"{last_two[0]} {word} {last_two[1]}"
    if len(items) == 2:
        return suffix
    return f"{', '.join(show(i) for i in items[:-2])}, {suffix}"


def _js_length(value: Any) -> str:
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, str):
        return str(len(value.encode("utf-16-le")) // 2)
    return "undefined"


def _path_text(path: Path) -> str:
    return ".".join(str(k) for k in path)


def _js_greater(a: PathKey, b: PathKey) -> bool:
    """`a > b` in JavaScript for two path keys (a string never compares with a number)."""
    if isinstance(a, int) and isinstance(b, int):
        return a > b
    if isinstance(a, str) and isinstance(b, str):
        return a.encode("utf-16-be") > b.encode("utf-16-be")
    return False


def _path_cmp(a: Path, b: Path) -> int:
    if len(a) != len(b):
        return len(b) - len(a)
    for x, y in zip(a, b, strict=True):
        if _js_greater(y, x):
            return -1
        if _js_greater(x, y):
            return 1
    return 0


def message(issue: Issue, root: Any, schema: Schema) -> str:
    """The text of `issue` (found validating `root` against `schema`), without the `TypeError: ` prefix."""
    path = issue.path
    at = f" at {_path_text(path)}" if path else ""
    if issue.code == "invalid_type":
        return f"Expected {_display_list('or', issue.expected)}{at}. Got {_display_at(root, path)}"
    if issue.code == "missing_value":
        parent = f" at {_path_text(path[:-1])}" if len(path) > 1 else ""
        if path:
            return f"Missing property {path[-1]}{parent}"
        return f"TODO Unknown missing property{parent}"
    if issue.code == "invalid_literal":
        return f"Expected literal value {_display_list('or', issue.expected, _display)}{at} Got {_display_at(root, path)}"
    if issue.code == "invalid_length":
        if issue.min_length == issue.max_length:
            length = str(issue.min_length)
        else:
            length = f"between {issue.min_length} and {'undefined' if issue.max_length is None else issue.max_length}"
        return f"Expected array with length {length}{at}. Got array with length {_js_length(root)}"
    if issue.code == "unrecognized_keys":
        if len(issue.keys) == 1:
            return f"Unexpected property {issue.keys[0]}{at}"
        return f"Unexpected properties {_display_list('and', issue.keys)}{at}"
    if issue.code == "invalid_union":
        if isinstance(schema, Union):
            return _deepest_union_message(root, schema)
        return f"Invalid union value{at}"
    raise AssertionError(f"unknown issue code {issue.code}")


def _deepest_union_message(value: Any, union: Union) -> str:
    failures = [(option, issue) for option in union.options if (issue := option.check(value, ())) is not None]
    failures.sort(key=functools.cmp_to_key(lambda a, b: _path_cmp(a[1].path, b[1].path)))
    if failures and (len(failures) == 1 or _path_cmp(failures[0][1].path, failures[1][1].path) < 0):
        option, issue = failures[0]
        return message(issue, value, option)
    return f"Invalid union value: {js_stringify(value)}"


def validate(value: Any, schema: Schema) -> str | None:
    """None when `value` matches `schema`, else zero-cache's text for the first issue."""
    issue = schema.check(value, ())
    return None if issue is None else message(issue, value, schema)
