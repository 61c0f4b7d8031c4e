"""The edge's protocol parsing: upstream messages, connect URLs, the subprotocol header.

Expected error texts were produced by @rocicorp/zero 1.9.0's own schema (`upstream_oracle.mjs`);
`tests/conformance/test_upstream_parity.py` compares thousands more frames against it live.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zcache.server import protocol as p
from zcache.server.validation import js_number, js_stringify

pytestmark = pytest.mark.unit

SHARED = Path(__file__).resolve().parents[2].parent / "shared"

# (frame, zero-cache's InvalidMessage text)
INVALID_FRAMES = [
    ('{"not":"a message"}', "TypeError: Expected array. Got object"),  # transcript 07
    ("[]", "TypeError: Invalid union value: []"),
    ('["foo",{}]', 'TypeError: Invalid union value: ["foo",{}]'),
    ('["ping"]', 'TypeError: Invalid union value: ["ping"]'),
    ('["ping",{"x":1}]', 'TypeError: Invalid union value: ["ping",{"x":1}]'),
    ('["updateAuth",{}]', "TypeError: Missing property auth at 1"),
    ('["updateAuth",{"auth":3}]', "TypeError: Expected string at 1.auth. Got 3"),
    ('["changeDesiredQueries",{"desiredQueriesPatch":[{"op":"put"}]}]', "TypeError: Missing property hash at 1.desiredQueriesPatch.0"),
    (
        '["changeDesiredQueries",{"desiredQueriesPatch":[{"op":"bad","hash":"x"}]}]',
        'TypeError: Expected literal value "put", "del" or "clear" at 1.desiredQueriesPatch.0.op Got "bad"',
    ),
    (
        '["changeDesiredQueries",{"desiredQueriesPatch":[{"op":"put","hash":"h","ttl":"x"}]}]',
        'TypeError: Expected number at 1.desiredQueriesPatch.0.ttl. Got "x"',
    ),
    ('["initConnection",{}]', "TypeError: Missing property desiredQueriesPatch at 1"),
    ('["deleteClients",{"clientIDs":[1]}]', "TypeError: Expected string at 1.clientIDs.0. Got 1"),
    (
        '["inspect",{"id":"x","op":"nope"}]',
        'TypeError: Expected literal value "queries", "metrics", "version", "authenticate" or "analyze-query" at 1.op Got "nope"',
    ),
    ('["ackMutationResponses",{"clientID":"c"}]', "TypeError: Missing property id at 1"),
    ('["push",{}]', "TypeError: Missing property clientGroupID at 1"),
    ("42", "TypeError: Expected array. Got 42"),
    ("null", "TypeError: Expected array. Got null"),
    ('"str"', 'TypeError: Expected array. Got "str"'),
]


@pytest.mark.parametrize(("frame", "expected"), INVALID_FRAMES)
def test_invalid_frames_get_zero_caches_invalid_message_text(frame: str, expected: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_upstream(frame)
    assert caught.value.kind == "InvalidMessage"
    assert caught.value.message == expected
    assert caught.value.body() == {"kind": "InvalidMessage", "message": expected, "origin": "zeroCache"}


def test_json_syntax_errors_are_invalid_messages() -> None:
    for frame in ("nonsense", "[1,", "[NaN]", '{"a":Infinity}', ""):
        with pytest.raises(p.ProtocolError) as caught:
            p.parse_upstream(frame)
        assert caught.value.kind == "InvalidMessage"
        assert caught.value.message.startswith("SyntaxError: ")


def test_deep_nesting_is_an_invalid_message_not_a_crash() -> None:
    with pytest.raises(p.ProtocolError, match="Maximum call stack"):
        p.parse_upstream("[" * 100_000 + "]" * 100_000)
    # Shallow enough for json.loads, too deep for validating conditions recursively.
    simple = '{"type":"simple","op":"=","left":{"type":"column","name":"a"},"right":{"type":"literal","value":1}}'
    where = '{"type":"and","conditions":[' * 400 + simple + "]}" * 400
    frame = f'["changeDesiredQueries",{{"desiredQueriesPatch":[{{"op":"put","hash":"h","ast":{{"table":"t","where":{where}}}}}]}}]'
    with pytest.raises(p.ProtocolError, match="Maximum call stack"):
        p.parse_upstream(frame)


def test_valid_messages_become_typed_values() -> None:
    init = p.parse_upstream(
        json.dumps(
            [
                "initConnection",
                {
                    "desiredQueriesPatch": [
                        {"op": "put", "hash": "paocmaxcpvto", "name": "filesByOwner", "args": [{"ownerId": "u1"}], "ttl": 300000},
                        {"op": "put", "hash": "rawq1", "ast": {"table": "file"}, "ttl": 0},
                        {"op": "del", "hash": "old"},
                        {"op": "clear"},
                    ],
                    "clientSchema": {"tables": {"file": {"columns": {"id": {"type": "string"}}, "primaryKey": ["id"]}}},
                    "deleted": {"clientIDs": ["gone"]},
                    "userQueryURL": "http://app/query",
                    "activeClients": ["c1"],
                },
            ]
        )
    )
    assert init == p.InitConnection(
        desired_queries_patch=[
            p.QueryPut("paocmaxcpvto", "filesByOwner", [{"ownerId": "u1"}], None, 300000),
            p.QueryPut("rawq1", None, None, {"table": "file"}, 0),
            p.QueryDel("old"),
            p.QueryClear(),
        ],
        client_schema={"tables": {"file": {"columns": {"id": {"type": "string"}}, "primaryKey": ["id"]}}},
        deleted_client_ids=["gone"],
        deleted_client_group_ids=[],
        user_push_url=None,
        user_push_headers={},
        user_query_url="http://app/query",
        user_query_headers={},
        active_clients=["c1"],
    )
    assert p.parse_upstream('["ping",{}]') == p.Ping()
    assert p.parse_upstream('["updateAuth",{"auth":"t"}]') == p.UpdateAuth("t")
    assert p.parse_upstream('["ackMutationResponses",{"clientID":"c","id":3}]') == p.AckMutationResponses("c", 3)
    assert p.parse_upstream('["deleteClients",{"clientIDs":["x"]}]') == p.DeleteClients(["x"], [])
    assert p.parse_upstream('["inspect",{"id":"i1","op":"version"}]') == p.Inspect({"id": "i1", "op": "version"})
    assert p.parse_upstream('["closeConnection",[]]') == p.CloseConnection()
    assert isinstance(p.parse_upstream('["pull",{"clientGroupID":"g","cookie":null,"requestID":"r"}]'), p.Pull)
    assert p.parse_upstream(b'["changeDesiredQueries",{"desiredQueriesPatch":[]}]') == p.ChangeDesiredQueries([])


@pytest.mark.skipif(not (SHARED / "conformance" / "transcripts").is_dir(), reason="shared reference material absent")
def test_every_upstream_frame_of_the_golden_transcripts_parses() -> None:
    frames = 0
    for transcript in sorted((SHARED / "conformance" / "transcripts").glob("*.jsonl")):
        for line in transcript.read_text().splitlines():
            record = json.loads(line)
            if record["dir"] != "c2s" or "event" in record:
                continue
            frames += 1
            if record["data"] == {"not": "a message"}:
                continue  # 07's deliberately malformed frame
            p.parse_upstream(json.dumps(record["data"]))
            if record["dir"] == "http-req" and "secProtocolDecoded" in record["data"]:
                pass
    assert frames > 20


def test_connect_params_of_a_real_client_url() -> None:
    target = (
        "/sync/v51/connect?clientID=tjf60lngbvfd28e13p&clientGroupID=grsid9gkscphl344v8&userID=u1&baseCookie="
        "&ts=28778.285779&lmid=0&wsid=6eTQiN6QLtjLVZhc3MUOP&profileID=pq8gtuc6c5reuv9pg25&reason=rehome"
    )
    request = p.parse_connect_request(target, "eyJhdXRoVG9rZW4iOiJ1c2VyOnUxIn0%3D")
    assert request.params == p.ConnectParams(
        client_id="tjf60lngbvfd28e13p",
        client_group_id="grsid9gkscphl344v8",
        user_id="u1",
        base_cookie=None,
        ts=28778,
        lmid=0,
        wsid="6eTQiN6QLtjLVZhc3MUOP",
        profile_id="pq8gtuc6c5reuv9pg25",
        debug_perf=False,
        protocol_version=51,
        extra={"reason": "rehome"},
    )
    assert request.sec_protocol == p.SecProtocol(None, "user:u1")


def test_connect_with_a_base_path_cookie_and_defaults() -> None:
    request = p.parse_connect_request("/zero/sync/v49/connect?clientID=c&clientGroupID=g&baseCookie=4tp4g0:01&ts=1&lmid=7", "e30%3D")
    params = request.params
    assert (params.protocol_version, params.base_cookie, params.lmid, params.wsid, params.user_id) == (49, "4tp4g0:01", 7, "", None)
    assert request.sec_protocol == p.SecProtocol(None, None)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/sync/v51/connect?clientGroupID=g&ts=1&lmid=0", "Error: invalid querystring - missing clientID"),  # transcript 07
        ("/sync/v51/connect?clientID=&clientGroupID=g&ts=1&lmid=0", "Error: invalid querystring - missing clientID"),
        ("/sync/v51/connect?clientID=c&ts=1&lmid=0", "Error: invalid querystring - missing clientGroupID"),
        ("/sync/v51/connect?clientID=c&clientGroupID=g&lmid=0", "Error: invalid querystring - missing ts"),
        (
            "/sync/v51/connect?clientID=c&clientGroupID=g&ts=x&lmid=0",
            "Error: invalid querystring parameter ts, got: x, url: http://unused/sync/v51/connect?clientID=c&clientGroupID=g&ts=x&lmid=0",
        ),
        ("/a/b/sync/v51/connect?clientID=c", "Error: Invalid URL: /a/b/sync/v51/connect?clientID=c"),
        ("/replication/v51/connect", "Error: Invalid URL: /replication/v51/connect"),
        ("/sync/vx/connect", "Error: Invalid version: /sync/vx/connect"),
    ],
)
def test_bad_connect_urls_are_rejected_with_zero_caches_close_reason(target: str, reason: str) -> None:
    with pytest.raises(p.ConnectRejected) as caught:
        p.parse_connect_request(target, "e30%3D")
    assert caught.value.reason == p.elide(reason, 123)
    assert len(caught.value.reason.encode()) <= 123


def test_missing_subprotocol_header_is_rejected() -> None:
    with pytest.raises(p.ConnectRejected, match="Unexpected undefined value"):
        p.parse_connect_request("/sync/v51/connect?clientID=c&clientGroupID=g&ts=1&lmid=0", None)


def test_version_range() -> None:
    p.check_protocol_version(30)
    p.check_protocol_version(51)
    with pytest.raises(p.ProtocolError) as caught:
        p.check_protocol_version(99)
    assert caught.value.kind == "VersionNotSupported"
    assert caught.value.message == (
        "server is at sync protocol v51 and does not support v99. The server must be updated to a newer release."
    )
    with pytest.raises(p.ProtocolError, match="The client must be updated"):
        p.check_protocol_version(29)


def test_subprotocol_round_trip_and_piggy_backed_init() -> None:
    init = ["initConnection", {"desiredQueriesPatch": [], "activeClients": ["c"]}]
    header = p.encode_sec_protocol(init, "tok")
    assert p.decode_sec_protocol(header) == p.SecProtocol(init, "tok")
    assert p.decode_sec_protocol("e30%3D") == p.SecProtocol(None, None)
    assert p.decode_sec_protocol("e30") == p.SecProtocol(None, None)  # atob accepts missing padding
    assert p.decode_sec_protocol(p.encode_sec_protocol(None, "")) == p.SecProtocol(None, None)


@pytest.mark.parametrize("header", ["%zz", "!!!", "e", "bnVsbA%3D%3D", p.encode_sec_protocol(None, None)[:-3] + "x"])
def test_undecodable_subprotocols_are_rejected(header: str) -> None:
    with pytest.raises(p.ConnectRejected):
        p.decode_sec_protocol(header)


def test_downstream_encoding() -> None:
    assert p.encode_downstream(p.error_message("InvalidMessage", "x")) == (
        '["error",{"kind":"InvalidMessage","message":"x","origin":"zeroCache"}]'
    )
    assert p.encode_downstream(p.connected_message("w", 5)) == '["connected",{"wsid":"w","timestamp":5}]'
    # A lone surrogate from a client's JSON must not break UTF-8 on the way back.
    text = p.encode_downstream(["error", {"message": json.loads('"\\ud800"')}])
    assert text == '["error",{"message":"\\ud800"}]'
    text.encode("utf-8")


def test_javascript_number_and_stringify_forms() -> None:
    cases = {0.1: "0.1", 1e21: "1e+21", 1e-7: "1e-7", 0.000001: "0.000001", 12345678901234567890: "12345678901234567000", 3.0: "3", -0.0: "0", 1e20: "100000000000000000000"}
    for value, text in cases.items():
        assert js_number(value) == text
    assert js_stringify({"b": 1, "10": 2, "2": [True, None, "é"]}) == '{"2":[true,null,"é"],"10":2,"b":1}'


def test_elide() -> None:
    assert p.elide("abc", 123) == "abc"
    cut = p.elide("é" * 100, 123)
    assert cut.endswith("...") and len(cut.encode()) <= 123


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
message_like = st.tuples(
    st.sampled_from(["initConnection", "changeDesiredQueries", "push", "ping", "pull", "updateAuth", "deleteClients", "inspect", "ackMutationResponses", "closeConnection", "x"]),
    json_values,
).map(list)


@given(st.one_of(json_values, message_like))
def test_arbitrary_json_raises_nothing_but_protocol_error(value: Any) -> None:
    try:
        p.parse_upstream(json.dumps(value))
    except p.ProtocolError as e:
        assert e.kind == "InvalidMessage"
        assert e.message.startswith("TypeError: ")


@given(st.text() | st.binary())
def test_arbitrary_frames_raise_nothing_but_protocol_error(frame: str | bytes) -> None:
    try:
        p.parse_upstream(frame)
    except p.ProtocolError as e:
        assert e.kind == "InvalidMessage"


@given(st.text(alphabet=string.printable + "é%", max_size=80), st.one_of(st.none(), st.text(max_size=40)))
def test_arbitrary_connect_requests_raise_nothing_but_connect_rejected(query: str, header: str | None) -> None:
    try:
        p.parse_connect_request(f"/sync/v51/connect?{query}", header)
    except p.ConnectRejected as e:
        assert e.reason.startswith("Error: ")
        assert len(e.reason.encode("utf-8", "surrogatepass")) <= 123
