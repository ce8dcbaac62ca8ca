"""The wire format: one msgpack map per ZeroMQ message, validated strictly.

Rules of this file:
- Every message is a map with `v` (protocol version, int), `op` (str) and `id` (request id, int).
  A reply carries the request's `op` and `id` plus `ok` (bool); a failed reply carries
  `error: {code, message}` and nothing else, and may echo an op this side does not know (it
  answers a request for one), or `invalid` when the request had no readable op. A message
  without `ok` is a request.
- Each op's request and reply is a frozen dataclass below; its annotated fields are its schema.
  Decoding checks every field's presence and type, refuses fields the schema does not name, and
  refuses frames over MAX_FRAME bytes before unpacking them. A request class may add a rule that
  ties its fields together (`validate`: the problem, or None), checked after the types.
- Errors are `ProtocolError(code, message)` with a stable `code` from `ErrorCode`; the message
  names the op and the field at fault. Nothing else escapes `decode()`: any byte string either
  decodes to a message or raises ProtocolError.
- Ids are chosen by the sender and unique per sender; a reply is matched to its request by id.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024
MAX_ID = 2**63 - 1
MAX_STR = 4096


class ErrorCode:
    """Stable error codes carried in `error.code`; clients match on these strings."""

    BAD_MESSAGE = "bad_message"        # not msgpack, not a map, missing/mistyped/unknown field
    UNKNOWN_OP = "unknown_op"
    BAD_VERSION = "bad_version"
    TOO_LARGE = "too_large"            # frame over MAX_FRAME
    NO_SUCH_BUFFER = "no_such_buffer"
    NO_SUCH_ATTACHMENT = "no_such_attachment"
    NO_SUCH_IMPORTER = "no_such_importer"  # a buffer op before hello
    BAD_STATE = "bad_state"            # the op is not allowed in the object's current state
    ACCESS_DENIED = "access_denied"    # a wrong, forged or replayed token, or another importer's handle
    BUSY = "busy"                      # backpressure: a per-importer limit is reached; try again later
    NO_DEVICE = "no_device"            # ENODEV: the buffer is revoked (Linux 7.1); map again after un-revoke
    NOT_SUPPORTED = "not_supported"    # EOPNOTSUPP: a revoking exporter refuses an importer it cannot revoke
    INTERNAL = "internal"              # a bug on our side; the service keeps serving


class ProtocolError(Exception):
    """A request or frame that cannot be served: carries the stable code and what was wrong."""

    def __init__(self, code: str, message: str, *, op: str = "invalid", id: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.op = op
        self.id = id


# ---------------------------------------------------------------------------------------------
# Nested records


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a buffer's bytes live: a range of a heap segment, at a generation."""

    heap: str
    offset: int
    size: int
    gen: int

    def describe(self) -> str:
        return f"{self.heap}+{self.offset:#x} (gen {self.gen})"


@dataclass(frozen=True, slots=True)
class HeapInfo:
    name: str
    shm: str
    size: int


@dataclass(frozen=True, slots=True)
class BufferInfo:
    buffer: int
    size: int


# ---------------------------------------------------------------------------------------------
# Messages. `OP` names the op; `REPLY` marks a reply type. Field order is the schema order.


@dataclass(frozen=True, slots=True)
class Message:
    OP: ClassVar[str] = ""
    REPLY: ClassVar[bool] = False
    id: int


# Requests, importer -> exporter -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """`token`: the join token for `name` (protocol/capability.py), handed out by dmabuf-emu."""

    OP = "hello"
    name: str
    pid: int
    strategy: str
    token: str


@dataclass(frozen=True, slots=True)
class Bye(Message):
    OP = "bye"


@dataclass(frozen=True, slots=True)
class Attach(Message):
    """`token`: the buffer's export token: the capability a dma-buf fd is. `revocable`: the
    importer implements invalidate_mappings and unmaps in bounded time as a result
    (dma_buf_attach_revocable); false for a static importer. Always on the wire; the default is
    only the constructor's."""

    OP = "attach"
    buffer: int
    token: str
    revocable: bool = True


@dataclass(frozen=True, slots=True)
class Detach(Message):
    OP = "detach"
    attachment: int
    token: str


@dataclass(frozen=True, slots=True)
class Map(Message):
    """dma_buf_map_attachment: hand the importer the buffer's current placement."""

    OP = "map"
    attachment: int
    token: str


@dataclass(frozen=True, slots=True)
class Unmap(Message):
    OP = "unmap"
    attachment: int
    token: str


@dataclass(frozen=True, slots=True)
class Pin(Message):
    OP = "pin"
    attachment: int
    token: str


@dataclass(frozen=True, slots=True)
class Unpin(Message):
    OP = "unpin"
    attachment: int
    token: str


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The importer has stopped using the old placement after a move_notify."""

    OP = "ack"
    attachment: int
    move: int


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    OP = "heartbeat"


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Answered `ok` in every state, by every service, on every socket."""

    OP = "ping"


# Requests, exporter -> importer -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MoveNotify(Message):
    """The exporter is moving `buffer` away from generation `gen` (kernel: move_notify)."""

    OP = "move_notify"
    buffer: int
    attachment: int
    move: int
    gen: int


@dataclass(frozen=True, slots=True)
class InvalidateMappings(Message):
    """Linux 7.1's name for the callback (dma_buf_invalidate_mappings): drop the mappings of
    `buffer` at generation `gen` and map again before any further DMA. It belongs to a move or to a
    revocation: exactly one of `move` and `revoke` is set (ids start at 1; 0 means none)."""

    OP = "invalidate_mappings"
    buffer: int
    attachment: int
    gen: int
    move: int
    revoke: int

    @staticmethod
    def validate(fields: dict[str, Any]) -> str | None:
        if (fields["move"] == 0) == (fields["revoke"] == 0):
            return "exactly one of 'move' and 'revoke' must be set (non-zero)"
        return None


# Control requests, deploy -> service (on the control socket) ----------------------------------


@dataclass(frozen=True, slots=True)
class Start(Message):
    """Begin the workload (importers) or memory pressure (exporter)."""

    OP = "start"


@dataclass(frozen=True, slots=True)
class Stop(Message):
    """Stop starting new work and drain; the reply comes when drained."""

    OP = "stop"


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """Leave gracefully: importers detach and say bye, the exporter unlinks its segments."""

    OP = "shutdown"


@dataclass(frozen=True, slots=True)
class Status(Message):
    OP = "status"


# Replies ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OkReply(Message):
    """The reply of every op whose answer is just `ok`."""

    REPLY = True
    op: str


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    REPLY = True
    op: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class HelloReply(Message):
    OP = "hello"
    REPLY = True
    slot: int
    strategy: str
    heaps: list[HeapInfo]
    fences_shm: str
    fence_slots: int
    buffers: list[BufferInfo]


@dataclass(frozen=True, slots=True)
class AttachReply(Message):
    """`token`: the attachment token, bound to this connection; map, unmap, pin, unpin and detach
    of the attachment must present it."""

    OP = "attach"
    REPLY = True
    attachment: int
    buffer: int
    size: int
    token: str


@dataclass(frozen=True, slots=True)
class MapReply(Message):
    """`moved`: the placement differs from the one this attachment was last handed.
    `fence`: seqno of the KERNEL fence that must signal before the placement is touched (0: none)."""

    OP = "map"
    REPLY = True
    placement: Placement
    moved: bool
    fence: int


@dataclass(frozen=True, slots=True)
class UnmapReply(Message):
    """`will_move`: the exporter intends to move the buffer; drop any cached IOMMU entries."""

    OP = "unmap"
    REPLY = True
    will_move: bool


@dataclass(frozen=True, slots=True)
class PinReply(Message):
    OP = "pin"
    REPLY = True
    pins: int


@dataclass(frozen=True, slots=True)
class StatusReply(Message):
    OP = "status"
    REPLY = True
    svc: str
    state: str
    pid: int


REQUESTS: dict[str, type[Message]] = {
    cls.OP: cls
    for cls in (Hello, Bye, Attach, Detach, Map, Unmap, Pin, Unpin, Ack, Heartbeat, Ping,
                MoveNotify, InvalidateMappings, Start, Stop, Shutdown, Status)
}
# Ops whose reply has a body; every other op is answered with OkReply.
REPLIES: dict[str, type[Message]] = {
    cls.OP: cls for cls in (HelloReply, AttachReply, MapReply, UnmapReply, PinReply, StatusReply)
}
ALL_OPS = frozenset(REQUESTS)


# ---------------------------------------------------------------------------------------------
# Schema: compiled once per class from its annotations.

# A checker takes the value, where it is (the message) and, for a field, the field's name; the
# label "<where>: field '<name>'" is only written when there is an error to report (formatting it
# for every valid field was a fifth of decoding a map reply).
_Checker = typing.Callable[..., Any]


def _type_name(value: Any) -> str:
    return type(value).__name__ if value is not None else "nil"


def _at(where: str, name: str | None) -> str:
    return where if name is None else f"{where}: field '{name}'"


def _check_int(value: Any, where: str, name: str | None = None) -> int:
    # bool is an int in Python but not on the wire.
    if type(value) is not int:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{_at(where, name)} must be an integer, got {_type_name(value)}")
    if not 0 <= value <= MAX_ID:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{_at(where, name)} must be in [0, 2^63), got {value}")
    return value


def _check_str(value: Any, where: str, name: str | None = None) -> str:
    if type(value) is not str:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{_at(where, name)} must be a string, got {_type_name(value)}")
    if len(value) > MAX_STR:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{_at(where, name)} is longer than {MAX_STR} characters")
    return value


def _check_bool(value: Any, where: str, name: str | None = None) -> bool:
    if type(value) is not bool:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{_at(where, name)} must be a boolean, got {_type_name(value)}")
    return value


def _record_checker(cls: type) -> _Checker:
    fields = _compile(cls)

    def check(value: Any, where: str, name: str | None = None) -> Any:
        if type(value) is not dict:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{_at(where, name)} must be a map, got {_type_name(value)}")
        return cls(**_check_fields(value, fields, _at(where, name), _NO_ENVELOPE))

    return check


def _list_checker(item: _Checker) -> _Checker:
    def check(value: Any, where: str, name: str | None = None) -> list:
        here = _at(where, name)
        if type(value) is not list:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{here} must be an array, got {_type_name(value)}")
        return [item(v, f"{here}[{i}]") for i, v in enumerate(value)]

    return check


def _checker_for(annotation: Any) -> _Checker:
    if annotation is int:
        return _check_int
    if annotation is str:
        return _check_str
    if annotation is bool:
        return _check_bool
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return _list_checker(_checker_for(item))
    if dataclasses.is_dataclass(annotation):
        return _record_checker(annotation)
    raise TypeError(f"no wire schema for {annotation!r}")


_SCHEMAS: dict[type, tuple[tuple[str, _Checker], ...]] = {}


def _compile(cls: type) -> tuple[tuple[str, _Checker], ...]:
    if cls not in _SCHEMAS:
        hints = typing.get_type_hints(cls)
        _SCHEMAS[cls] = tuple(
            (f.name, _checker_for(hints[f.name])) for f in dataclasses.fields(cls) if f.name != "id"
        )
    return _SCHEMAS[cls]


def _check_fields(raw: dict, fields: tuple[tuple[str, _Checker], ...], where: str,
                  envelope: typing.AbstractSet[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, check in fields:
        if name not in raw:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{where}: missing field '{name}'")
        out[name] = check(raw[name], where, name)
    if len(raw) != len(fields) + len(envelope):
        known = {name for name, _ in fields} | envelope
        extra = sorted(str(k) for k in raw if k not in known)
        if extra:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{where}: unexpected field '{extra[0]}'")
    return out


# ---------------------------------------------------------------------------------------------
# Encode / decode


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _to_wire(value: Any) -> Any:
    kind = type(value)
    if kind in (int, str, bool, bytes, float) or value is None:  # most fields: nothing to do
        return value
    if kind is list:
        return [_to_wire(v) for v in value]
    names = _FIELD_NAMES.get(kind)
    if names is None:
        if not dataclasses.is_dataclass(value):
            return value
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    return {name: _to_wire(getattr(value, name)) for name in names}


_PLAIN = frozenset((int, str, bool, bytes, float, type(None)))   # what _to_wire leaves as it is
_NAMES: dict[type, tuple[str, ...]] = {}                           # a message class's field names but id


def encode(msg: Message) -> bytes:
    """Serialise a message; the inverse of decode()."""
    if isinstance(msg, ErrorReply):
        body = {"v": PROTOCOL_VERSION, "op": msg.op, "id": msg.id, "ok": False,
                "error": {"code": msg.code, "message": msg.message}}
    elif isinstance(msg, OkReply):
        body = {"v": PROTOCOL_VERSION, "op": msg.op, "id": msg.id, "ok": True}
    else:
        cls = type(msg)
        body = {"v": PROTOCOL_VERSION, "op": msg.OP, "id": msg.id}
        if msg.REPLY:
            body["ok"] = True
        names = _NAMES.get(cls)
        if names is None:
            names = _NAMES[cls] = tuple(name for name, _ in _compile(cls))
        for name in names:
            value = getattr(msg, name)
            body[name] = value if type(value) in _PLAIN else _to_wire(value)
    return msgpack.packb(body, use_bin_type=True)


_ENVELOPE = {"v", "op", "id"}
_NO_ENVELOPE: frozenset[str] = frozenset()
_REPLY_ENVELOPE = {"v", "op", "id", "ok"}


def decode(frame: bytes) -> Message:
    """Parse and validate one frame. Raises ProtocolError (and nothing else) on any fault."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(frame)} bytes is over the {MAX_FRAME}-byte limit")
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not a msgpack message ({type(exc).__name__})") from None
    if type(raw) is not dict:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"message must be a map, got {_type_name(raw)}")
    op = raw.get("op")
    op_name = op if type(op) is str and len(op) <= 64 else "invalid"
    msg = _decode_valid(raw, op)
    if msg is not None:
        return msg
    msg_id = raw.get("id")
    msg_id = msg_id if type(msg_id) is int and 0 <= msg_id <= MAX_ID else 0
    try:
        return _decode_map(raw, op_name)
    except ProtocolError as err:
        err.op, err.id = op_name, msg_id
        raise


def _decode_map(raw: dict, op_name: str) -> Message:
    if "v" not in raw:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "missing field 'v' (protocol version)")
    version = _check_int(raw["v"], "field 'v'")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})")
    if "op" not in raw:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "missing field 'op'")
    op = _check_str(raw["op"], "field 'op'")
    if "id" not in raw:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{op}: missing field 'id'")
    msg_id = _check_int(raw["id"], op, "id")
    ok = _check_bool(raw["ok"], f"{op} reply", "ok") if "ok" in raw else None
    if op not in ALL_OPS and ok is not False:
        # A failed reply may echo an op we do not know: it is the answer to such a request.
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op '{op_name}'")
    if ok is None:
        cls = REQUESTS[op]
        fields = _check_fields(raw, _compile(cls), op, _ENVELOPE)
        validate = getattr(cls, "validate", None)
        problem = validate(fields) if validate is not None else None
        if problem is not None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{op}: {problem}")
        return cls(id=msg_id, **fields)
    if not ok:
        err = raw.get("error")
        if type(err) is not dict:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{op} reply: failed reply needs an 'error' map")
        fields = (("code", _check_str), ("message", _check_str))
        body = _check_fields(err, fields, f"{op} reply: field 'error'", set())
        _check_fields(raw, (("error", lambda v, w, n=None: v),), f"{op} reply", _REPLY_ENVELOPE)
        return ErrorReply(id=msg_id, op=op, **body)
    cls = REPLIES.get(op)
    if cls is None:
        _check_fields(raw, (), f"{op} reply", _REPLY_ENVELOPE)
        return OkReply(id=msg_id, op=op)
    return cls(id=msg_id, **_check_fields(raw, _compile(cls), f"{op} reply", _REPLY_ENVELOPE))


# The fast path of decode(): a request or a successful reply whose every field is present, of
# its exact type and in range, with nothing else in the map, is built here at once; anything
# else (a failed reply, a list field, a `validate` rule that objects, any fault at all) returns
# None and goes through _decode_map, which makes the same message or names the fault. Each
# test below is one of _decode_map's, so both paths accept exactly the same maps.
_INT, _STR, _BOOL = "i", "s", "b"
_Plan = tuple[tuple[str, Any], ...]      # (field, _INT | _STR | _BOOL | (record class, its plan))
_PLANS: dict[type, _Plan | None] = {}
_MISSING = object()


def _plan(cls: type, skip: str | None = "id") -> _Plan | None:
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        if f.name == skip:
            continue
        t = hints[f.name]
        if t is int or t is str or t is bool:
            out.append((f.name, _INT if t is int else _STR if t is str else _BOOL))
        elif dataclasses.is_dataclass(t):
            sub = _plan(t, None)
            if sub is None:
                return None
            out.append((f.name, (t, sub)))
        else:
            return None                  # lists: the slow path
    return tuple(out)


def _plan_of(cls: type) -> _Plan | None:
    if cls not in _PLANS:
        _PLANS[cls] = None if getattr(cls, "validate", None) is not None else _plan(cls)
    return _PLANS[cls]


def _values(raw: dict, plan: _Plan) -> list[Any] | None:
    out = []
    for name, kind in plan:
        v = raw.get(name, _MISSING)
        t = type(v)
        if kind is _INT:
            if t is not int or not 0 <= v <= MAX_ID:
                return None
        elif kind is _STR:
            if t is not str or len(v) > MAX_STR:
                return None
        elif kind is _BOOL:
            if t is not bool:
                return None
        else:
            rec, sub = kind
            if t is not dict or len(v) != len(sub):
                return None
            inner = _values(v, sub)
            if inner is None:
                return None
            v = rec(*inner)
        out.append(v)
    return out


def _decode_valid(raw: dict, op: Any) -> Message | None:
    if type(op) is not str or raw.get("v") != PROTOCOL_VERSION or type(raw.get("v")) is not int:
        return None
    msg_id = raw.get("id")
    if type(msg_id) is not int or not 0 <= msg_id <= MAX_ID:
        return None
    ok = raw.get("ok", _MISSING)
    if ok is _MISSING:                   # a request
        cls = REQUESTS.get(op)
        envelope = 3
    elif ok is True:                     # a successful reply
        if op not in ALL_OPS:
            return None
        cls = REPLIES.get(op)
        envelope = 4
        if cls is None:
            return OkReply(id=msg_id, op=op) if len(raw) == 4 else None
    else:
        return None
    if cls is None:
        return None
    plan = _plan_of(cls)
    if plan is None or len(raw) != len(plan) + envelope:
        return None
    values = _values(raw, plan)
    return None if values is None else cls(msg_id, *values)


def error_reply(err: ProtocolError) -> ErrorReply:
    return ErrorReply(id=err.id, op=err.op, code=err.code, message=err.message)


def ok_reply(request: Message) -> OkReply:
    return OkReply(id=request.id, op=request.OP)


AnyReply = Union[OkReply, ErrorReply, HelloReply, AttachReply, MapReply, UnmapReply, PinReply, StatusReply]
