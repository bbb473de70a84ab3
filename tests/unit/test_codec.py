"""The codec: every registered message type round-trips; every bad input maps to its code."""

from __future__ import annotations


import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import (
    MAX_MESSAGE_SIZE,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    ErrorCode,
    Header,
    ProtocolError,
    body_model,
    decode,
    decode_event,
    decode_header,
    encode,
    encode_event,
    make_header,
)
from protocols.base import Body
from protocols.codec import peek_header
from protocols.command import (
    CommandSubmit,
)
from protocols.events import SessionEvent
from protocols.peer import (
    Ack,
    PeerDisconnect,
    PeerHeartbeat,
    PeerKind,
    PeerRegister,
    PeerState,
)
from protocols.task import (
    Outcome,
    TaskResult,
)

from tests.unit.codec_samples import SAMPLES, task_spec

pytestmark = pytest.mark.timeout(60)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
# no example database: the tests write nothing outside pytest's tmp dirs
QUICK = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = st.text(min_size=1, max_size=128)



def _frames(body: Body, **header_kw) -> list[bytes]:
    header = make_header(body.TYPE, header_kw.pop("src", "alice"), header_kw.pop("dst", "bob"),
                         **header_kw)
    return encode(header, body)


def _header_map(**overrides) -> dict:
    raw = {"v": PROTOCOL_VERSION, "type": "ack", "id": "id-1", "src": "alice", "dst": "bob",
           "corr": "", "ts": 1.0}
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not _MISSING}


_MISSING = object()


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _raises(code: ErrorCode, frames) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.code == code, info.value
    return info.value


def _locs(err: ProtocolError) -> set[str]:
    return {e["loc"] for e in err.details["errors"]}


# ---- round trips ----------------------------------------------------------------------


def test_samples_cover_every_registered_type():
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    for type_, body in SAMPLES.items():
        assert body.TYPE == type_
        assert body_model(type_) is type(body)


@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_every_registered_type_round_trips(type_):
    body = SAMPLES[type_]
    header = make_header(type_, "alice", "bob", corr="c" * 32)
    frames = encode(header, body)
    assert len(frames) == 2 and all(isinstance(f, bytes) for f in frames)
    msg = decode(frames)
    assert msg.header == header
    assert type(msg.body) is type(body)
    assert msg.body == body
    # the wire form is plain msgpack maps
    assert msgpack.unpackb(frames[0])["type"] == type_
    assert isinstance(msgpack.unpackb(frames[1]), dict)


@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_every_registered_type_round_trips_as_event(type_):
    body = SAMPLES[type_]
    header = make_header(type_, "orchestrator", "*")
    topic, msg = decode_event(encode_event("task.running", header, body))
    assert topic == "task.running"
    assert msg.header == header and msg.body == body


@settings(max_examples=60, **QUICK)
@given(stdout=st.text(max_size=300), stderr=st.text(max_size=300), error=st.text(max_size=100),
       exit_code=st.none() | INT64, duration=FLOATS, outcome=st.sampled_from(list(Outcome)),
       data=st.dictionaries(st.text(max_size=10),
                            st.none() | st.booleans() | INT64 | FINITE | st.text(max_size=20),
                            max_size=5))
def test_task_result_round_trips_any_text_and_numbers(stdout, stderr, error, exit_code, duration,
                                                      outcome, data):
    body = TaskResult(session_id="s", task_id="t", attempt_id="a", agent_id="g", outcome=outcome,
                      exit_code=exit_code, stdout=stdout, stderr=stderr, error=error,
                      duration_s=duration, data=data)
    assert decode(_frames(body)).body == body


@settings(max_examples=60, **QUICK)
@given(text=st.text(min_size=1, max_size=300), repo=st.text(min_size=1, max_size=50),
       priority=st.integers(-100, 100), budget=st.none() | st.floats(min_value=0.001, max_value=1e9),
       max_parallel=st.none() | st.integers(1, 2**31), role=st.text(max_size=20))
def test_command_submit_round_trips(text, repo, priority, budget, max_parallel, role):
    body = CommandSubmit(text=text, repo=repo, priority=priority, budget_usd=budget,
                         max_parallel=max_parallel, role=role)
    assert decode(_frames(body)).body == body


@settings(max_examples=60, **QUICK)
@given(name=NAMES, capacity=st.integers(0, 1024), pid=st.integers(0, 2**31),
       caps=st.lists(st.text(max_size=10), max_size=5), src=NAMES, dst=NAMES,
       msg_id=st.text(min_size=1, max_size=64), corr=st.text(max_size=64), ts=FLOATS)
def test_peer_register_and_header_fields_round_trip(name, capacity, pid, caps, src, dst, msg_id,
                                                    corr, ts):
    body = PeerRegister(name=name, kind=PeerKind.AGENT, capabilities=caps, capacity=capacity,
                        pid=pid)
    header = Header(type=body.TYPE, id=msg_id, src=src, dst=dst, corr=corr, ts=ts)
    msg = decode(encode(header, body))
    assert msg.header == header and msg.body == body


@settings(max_examples=40, **QUICK)
@given(load=st.integers(0, 2**63 - 1), running=st.lists(st.text(max_size=30), max_size=10),
       state=st.sampled_from(list(PeerState)))
def test_heartbeat_round_trips(load, running, state):
    body = PeerHeartbeat(state=state, load=load, running=running)
    assert decode(_frames(body)).body == body


def test_non_finite_floats_round_trip_in_typed_and_free_form_fields():
    # A typed float keeps inf, but the same value inside a free-form ``data`` dict comes back
    # as None: model_dump(mode="json") maps non-finite floats under ``Any`` to null.
    inf = float("inf")
    body = TaskResult(session_id="s", task_id="t", attempt_id="a", agent_id="g",
                      outcome=Outcome.SUCCEEDED, duration_s=inf,
                      data={"rate": inf, "floor": -inf, "nested": {"x": [inf]}})
    got = decode(_frames(body)).body
    assert got.duration_s == inf
    assert got.data == {"rate": inf, "floor": -inf, "nested": {"x": [inf]}}


def test_encode_refuses_a_body_of_another_type():
    with pytest.raises(ValueError):
        encode(make_header("ack", "a", "b"), PeerDisconnect())


# ---- frame-level errors ---------------------------------------------------------------


@pytest.mark.parametrize("frame", [b"\xc1", b"\x92\x01", b"", b"\xdc\xff\xff"])
def test_header_that_is_not_msgpack_is_decode_error(frame):
    err = _raises(ErrorCode.DECODE_ERROR, [frame, _pack({})])
    assert "header" in err.reason


@pytest.mark.parametrize("obj", [[1, 2], "text", 5, None, b"bytes"])
def test_header_that_is_not_a_map_is_decode_error(obj):
    err = _raises(ErrorCode.DECODE_ERROR, [_pack(obj), _pack({})])
    assert "map" in err.reason


def test_header_map_with_non_string_keys_is_decode_error():
    _raises(ErrorCode.DECODE_ERROR, [_pack({1: "x"}), _pack({})])


def test_body_that_is_not_msgpack_or_not_a_map_is_decode_error():
    header = _pack(_header_map())
    err = _raises(ErrorCode.DECODE_ERROR, [header, b"\xc1garbage"])
    assert "body" in err.reason
    err = _raises(ErrorCode.DECODE_ERROR, [header, _pack(["not", "a", "map"])])
    assert "body" in err.reason and "map" in err.reason


@pytest.mark.parametrize("count", [0, 1, 3, 4])
def test_wrong_frame_count_is_decode_error(count):
    good = _frames(Ack())
    frames = (good * 2)[:count]
    err = _raises(ErrorCode.DECODE_ERROR, frames)
    assert str(count) in err.reason


def test_version_mismatch_reports_expected_and_got():
    err = _raises(ErrorCode.VERSION_MISMATCH, [_pack(_header_map(v=2)), _pack({})])
    assert err.details == {"expected": PROTOCOL_VERSION, "got": 2}


def test_missing_version_is_a_version_mismatch_not_a_default():
    err = _raises(ErrorCode.VERSION_MISMATCH, [_pack(_header_map(v=_MISSING)), _pack({})])
    assert err.details["got"] is None


@pytest.mark.parametrize("v", ["1", 0, [1], None])
def test_other_version_values_are_mismatches(v):
    _raises(ErrorCode.VERSION_MISMATCH, [_pack(_header_map(v=v)), _pack({})])


def test_version_is_checked_before_header_validation():
    _raises(ErrorCode.VERSION_MISMATCH, [_pack(_header_map(v=9, id=_MISSING)), _pack({})])


def test_unknown_type():
    err = _raises(ErrorCode.UNKNOWN_TYPE, [_pack(_header_map(type="task.teleport")), _pack({})])
    assert "task.teleport" in err.reason
    with pytest.raises(ProtocolError) as info:
        body_model("task.teleport")
    assert info.value.code == ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("overrides, loc", [
    ({"id": ""}, "id"),
    ({"id": _MISSING}, "id"),
    ({"src": "x" * 129}, "src"),
    ({"dst": _MISSING}, "dst"),
    ({"type": ""}, "type"),
    ({"ts": "yesterday"}, "ts"),
    ({"corr": "c" * 65}, "corr"),
    ({"extra": 1}, "extra"),
])
def test_header_validation_errors_name_the_field(overrides, loc):
    err = _raises(ErrorCode.VALIDATION_ERROR, [_pack(_header_map(**overrides)), _pack({})])
    assert loc in _locs(err)
    assert "header" in err.reason


def test_decode_header_leaves_the_body_unparsed():
    frames = [_pack(_header_map(type="task.result")), b"\xc1 not msgpack at all"]
    header = decode_header(frames)
    assert header.type == "task.result" and header.id == "id-1"


@pytest.mark.parametrize("body, locs", [
    ({"name": "a", "kind": "agent", "capacity": -1}, {"capacity"}),
    ({"name": "a", "kind": "robot"}, {"kind"}),
    ({"kind": "agent"}, {"name"}),
    ({"name": "a", "kind": "agent", "bogus": True}, {"bogus"}),
])
def test_body_validation_errors_name_the_field(body, locs):
    err = _raises(ErrorCode.VALIDATION_ERROR,
                  [_pack(_header_map(type="peer.register")), _pack(body)])
    assert locs <= _locs(err)
    assert "peer.register" in err.reason


def test_nested_body_validation_error_has_a_dotted_location():
    spec = task_spec().model_dump(mode="json")
    spec["prompt"] = ""
    spec["timeout_s"] = 0
    err = _raises(ErrorCode.VALIDATION_ERROR,
                  [_pack(_header_map(type="task.enqueue")), _pack({"task": spec})])
    assert {"task.prompt", "task.timeout_s"} <= _locs(err)
    for e in err.details["errors"]:
        assert set(e) == {"loc", "msg"} and e["msg"]


# ---- size -------------------------------------------------------------------------------


def _result_with_stdout(n: int) -> TaskResult:
    return TaskResult(session_id="s", task_id="t", attempt_id="a", agent_id="g",
                      outcome=Outcome.SUCCEEDED, stdout="x" * n)


def test_encode_accepts_exactly_the_maximum_and_refuses_one_byte_more():
    header = make_header("task.result", "alice", "bob", id_="fixed-id")
    probe = 100_000  # large enough that msgpack uses its 32-bit string length form
    overhead = sum(map(len, encode(header, _result_with_stdout(probe)))) - probe
    exact = MAX_MESSAGE_SIZE - overhead
    frames = encode(header, _result_with_stdout(exact))
    assert sum(map(len, frames)) == MAX_MESSAGE_SIZE
    assert decode(frames).body.stdout == "x" * exact
    with pytest.raises(ProtocolError) as info:
        encode(header, _result_with_stdout(exact + 1))
    assert info.value.code == ErrorCode.OVERSIZE
    assert info.value.details == {"size": MAX_MESSAGE_SIZE + 1, "max": MAX_MESSAGE_SIZE}


def test_decode_refuses_oversize_before_anything_else():
    header = _pack(_header_map())
    err = _raises(ErrorCode.OVERSIZE, [header, b"\x00" * MAX_MESSAGE_SIZE])
    assert err.details["max"] == MAX_MESSAGE_SIZE
    assert err.details["size"] == len(header) + MAX_MESSAGE_SIZE
    # even with a wrong frame count, size is what is reported
    _raises(ErrorCode.OVERSIZE, [b"\x00" * (MAX_MESSAGE_SIZE + 1)])
    with pytest.raises(ProtocolError) as info:
        decode_event([b"t", header, b"\x00" * MAX_MESSAGE_SIZE])
    assert info.value.code == ErrorCode.OVERSIZE


# ---- events -----------------------------------------------------------------------------


def test_decode_event_errors():
    frames = _frames(Ack())
    with pytest.raises(ProtocolError) as info:
        decode_event(frames)  # no topic
    assert info.value.code == ErrorCode.DECODE_ERROR
    with pytest.raises(ProtocolError) as info:
        decode_event([b"t", *frames, b"extra"])
    assert info.value.code == ErrorCode.DECODE_ERROR
    with pytest.raises(ProtocolError) as info:
        decode_event([b"\xff\xfe", *frames])
    assert info.value.code == ErrorCode.DECODE_ERROR
    assert "UTF-8" in info.value.reason
    with pytest.raises(ProtocolError) as info:
        decode_event([b"t", _pack(_header_map(v=3)), frames[1]])
    assert info.value.code == ErrorCode.VERSION_MISMATCH


def test_decode_event_topic_is_unicode_text():
    header = make_header("event.session", "orchestrator", "*")
    body = SessionEvent(session_id="s", state="running")
    topic, msg = decode_event(encode_event("session.running.ü", header, body))
    assert topic == "session.running.ü"
    assert msg.body == body


# ---- peek_header -------------------------------------------------------------------------


def test_peek_header_reads_a_good_header_when_the_body_is_bad():
    header = make_header("task.result", "agent-1", "orchestrator", id_="req-77")
    frames = [encode(header, SAMPLES["task.result"])[0], _pack({"task_id": 5})]
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.code == ErrorCode.VALIDATION_ERROR
    peeked = peek_header(frames)
    assert peeked == header
    # also when the body is garbage or missing (wrong frame count)
    assert peek_header([frames[0], b"\xc1"]) == header
    assert peek_header([frames[0]]) == header


def test_peek_header_returns_none_for_unreadable_headers():
    assert peek_header([]) is None
    assert peek_header([b"\xc1", b""]) is None
    assert peek_header([_pack([1, 2]), b""]) is None
    assert peek_header([_pack(_header_map(id="")), b""]) is None
    big = _pack(_header_map(detail="x" * 5000))
    assert peek_header([big, b""]) is None
