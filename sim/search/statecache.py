"""statecache: a hash of a simulated world's state at a step choice point, and what a cache over it
would cut. `explore --state-cache` (sim/search/cache.py) keys on the world as walked here and on
the checker's state in place of the history (see the end: the history made it not pay).

A key is taken only at a *step* choice point (sim/world.py asks the scheduler which actor runs
next): there every callback has returned and the whole run is in the object graph, none of it in
a Python frame. A fault or stall draw is asked in the middle of a callback (a send, a chunk
come due), with the rest of that step still on the stack: no key is taken there.

How a key is made: `Keyer`, a pickle of the object graph written by the C pickler (2.3 ms a key on
resv-fence with three importers before constants were written as one index each, against 8.5 ms
for `Canon`'s walk in Python, which stays as its reference: tests/test_state_cache.py checks that
the two split the states of whole searches the same way). Below, "walked" says what either covers.

What the key covers, `state_key(world, chooser)`:
- Everything the run can reach from the world, walked as an object graph from its roots: the
  world's pending timers and arrivals (`_heap`: each entry as its time *minus now*, its rank
  among the pending entries (the heap's (t, seq) order: its tie order), its actor and its
  callback), the ready list, every process (paused, dead, stopping, its on_exit / on_kill) and
  actor (its order, queued callbacks, due entries), the crashes so far, the scheduler's
  generators (the state of each random.Random behind a stream, and the set of stream names:
  `rng` names a restart's generator by it). Callbacks are walked as functions: their code (file, line, name), their
  closure cells, their defaults and, for a bound method, the object it is bound to. So both
  protocol halves, the service shells, the engines, the channels and their inboxes (frames in
  flight and unread), the links, the simulated memory (each segment's bytes) and the fence
  table are in the key through the callbacks that will run them: a future step runs a
  callback the world holds, and a callback can only read what it reaches. The driver
  (sim/driver.py) is a suspended generator: its code, the instruction it stopped at and its
  locals are walked, and what it delegates to (`yield from`). Python does not show a suspended
  frame's value stack; the driver's one yield inside a for loop (call_all) has its position in
  its locals (the current name and message; names are unique), so nothing is lost there, but a
  new generator that yields inside `for x in xs` over repeated items would need this revisited.
- Integers that are absolute virtual times are not told apart from other integers; an int
  `x >= t0` (the world's start, 1 s of virtual time: no count, id, size or seq of a small
  configuration reaches it) is hashed as `x - now`. A duration of 1 s or more is then hashed
  as an offset too: two states then agree on it only at the same now (a miss, never a wrong
  hit). Times inside bytes (frames, history lines) are hashed as they are (absolute).
- The search's own state (`chooser`): whether the window is open or closed and how many DMA
  jobs are running in it (sim/search/trial.py Window: when the schedule is cut), and, under
  late-frames, the frames already held back (which a WAIT costs). The bound left and the sleep
  set are not in the key: they are compared at a hit (a state explored with at least as much
  bound left and no more asleep covers this visit: every option explored then is allowed now).
- The checker. A race pairs an event of the past with one of the future (a DMA begun before
  the state, a copy after it), so the verdict on the rest of the run depends on the history so
  far. checker/oracle.py keeps its incremental state as live jobs, attachments, generations
  *and* statistics (counts, histograms, lists for the report), which differ between any two
  different pasts; rather than pick the part that matters (a judge that shares code with the
  judged shares its bugs), the key covers the history itself: `history="full"` hashes every
  service's lines so far, in order, and `now` itself (the past's times are absolute, so two
  states agree only at the same instant with byte-identical pasts, and then the checker, a
  function of the merged history, gives the same verdicts on every continuation that agrees).
  `history="none"` leaves the checker out: a key of the world alone, for measuring how much
  the history costs (not sound for caching).

What is left out, and why it cannot change the future:
- Statistics nothing reads back: world.steps (only against MAX_STEPS, 50 million), the
  scheduler's decision log and counts (a guide reads a decision's index; a search has none), the network's frame/message/drop counters, each timer
  entry's raw seq (only its rank orders anything), a SimRandom's stream id (it only labels log
  entries), the world's observer and the chooser (the search's, covered above).
- Module-level state: the caches of pure functions (protocol compile_spec, wire schemas,
  runtime/memory.py's index cache, trial.py's `offered`), the same for every schedule.

Measured (`measure`: the exhaustive sleep-set search run whole beside simulated caches; CPU
seconds by process_time on the shared 2-core machine, load 10 to 15):
- resv-fence small configuration, bound 2, no stalls: 3,702 runs (1,474 schedules, 2,228 cut
  by sleep sets), 12,126 step choice points no earlier run went through. Distinct keys: 5,362 of
  the world alone, 9,044 with the history. Hits (seen on another path with as much bound left
  and no more asleep): 310 of the world's key, 49 of the whole key; none at another instant (the
  driver holds the workload's start and end as absolute float seconds, and the stop comes at a
  fixed instant, so two states at different instants always differ, as they should). Runs a
  cache would not make: 750 of 3,702 with the whole key (300 of the 1,474 schedules: as many as
  the schedules whose history repeats, 1,474 - 1,176 distinct), 2,123 with the world's alone.
- A key costs 8 to 10 ms of CPU (about 1,360 objects walked) and a whole schedule 14 ms: the
  cached search would hash 9,081 points (about 90 s) to save about 10 s of the 50 s search.
- Smaller configurations (tests/test_dpor.py's MUTANT, EARLY_SIGNAL, RF_DUP, REVOKE, MNA at bound 2,
  move-notify small at bound 1): the whole key cuts 12 to 38% of the runs; over the whole tree
  no hit's subtree finds a race or an end state its first visit's did not; with the world's key
  alone hits lose end states (tests/test_statecache.py).
Why states do not repeat: sleep sets already cut the reorderings of independent steps, the
usual source of repeated states; two paths that still meet differ in their past (a frame to an
idle importer delivered one WAIT later, so its move_notify_received has another time; two lines
of the exporter at one instant in the other order), and the checker may need that past.
What changed that (sim/search/cache.py): the checker's part of the key is the checker's own state
(checker/oracle.py's Oracle fed the lines before the instant, walked whole here, times as
offsets), not the history's bytes; two lines of one instant in the other order leave it as it
was. On the small configuration that still does not pay (resv-fence bound 2, punctual: 1,172
schedules instead of 1,474, 75 CPU s against 22). With three importers it does: their answers
reach the exporter at one instant in every order, 6 per instant, each a history of its own, and
one world and checker state after (resv-fence, 3 importers x 3 buffers x 3 moves, bound 0: 1,296
schedules by dpor, one end state; docs/results.md). The tables compile_spec shares are hashed as
one token each (`_STATIC`). With DPOR a hit adds conservative backtrack points (cache.py).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import types
from collections import deque
from enum import Enum
from typing import Any

import numpy as np

from sim.world import Actor, World

FULL, NONE = "full", "none"
HISTORY_MODES = (FULL, NONE)

# (type name, attribute) walked past: statistics nothing reads back (module docstring).
# The world itself is walked by Canon.world_children (its own list of what counts).
_SKIP = {
    ("SimNetwork", "frames"), ("SimNetwork", "messages"), ("SimNetwork", "dropped"),
    ("SimRandom", "_sid"), ("SimRandom", "_sched"),
}
_ATOMS = (type(None), bool, int, float, str, bytes, complex)
_SORTABLE = frozenset(_ATOMS) - {complex}   # atoms a set of them is walked sorted by (type, value)
# The strategies' checked tables (protocol/machine.py CompiledCache): shared by every schedule and
# read-only to everyone, so each is hashed as one token, its place in this registry (the table is
# kept here: its id is never reused). A table built outside the caches is walked as anything else.
_STATIC: dict[int, tuple[Any, int]] = {}


def _register_static() -> None:
    from protocol.machine import CACHES
    for cache in CACHES:
        for table in cache.held():
            if id(table) not in _STATIC:
                _STATIC[id(table)] = (table, len(_STATIC))


class Canon:
    """Walks an object graph into a canonical token stream (shared objects and cycles by
    back-reference to their first visit, in walk order)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.now = world.now
        self.t0 = world.t0
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []             # keeps walked temporaries alive (ids stay unique)
        self.out: list[Any] = []
        self.ranks: dict[int, int] = {}       # id(heap entry) -> rank in (t, seq) order
        self.histories: list[list[bytes]] = []   # each service's history lines so far, in walk order

    # ------------------------------------------------------------------ the walk

    def walk(self, root: Any) -> None:
        _register_static()
        stack = [root]
        out, memo = self.out, self.memo
        while stack:
            x = stack.pop()
            t = type(x)
            if t is _Tok:
                out.append(x.v)
                continue
            if t is int:
                out.append(("T", x - self.now) if x >= self.t0 else x)
                continue
            if t in _ATOMS:
                out.append(x)
                continue
            i = id(x)
            seen = memo.get(i)
            if seen is not None:
                out.append(("@", seen))
                continue
            fixed = _STATIC.get(i)
            if fixed is not None and fixed[0] is x:
                out.append(("static", fixed[1]))    # a checked table: read-only, one token
                continue
            memo[i] = len(memo)
            self.keep.append(x)
            stack.extend(reversed(self.children(x)))

    def children(self, x: Any) -> list[Any]:
        t = type(x)
        lay = _LAYOUT.get(t)
        if lay is not None:                    # a plain object of a type walked before
            return self.fields(x, lay)
        if t is list:
            if i := self.ranks.get(id(x)):
                return self.entry(x, i)
            if len(x) in (4, 5) and (x[2] is None or type(x[2]) is Actor) and type(x[0]) is int:
                return self.entry(x, 0)        # a timer entry off the heap (due, cancelled)
            return [_Tok(("L", len(x))), *x]
        if t is tuple:
            return [_Tok(("U", len(x))), *x]
        if t is dict:
            out: list[Any] = [_Tok(("D", len(x)))]
            for k, v in x.items():
                out += (k, v)
            return out
        if t is deque:
            return [_Tok(("Q", len(x))), *x]
        if t in (set, frozenset):
            if all(type(e) in _SORTABLE for e in x):   # in a canonical order: iteration order follows
                x = sorted(x, key=lambda e: (type(e).__name__, e))   # insertions and str hashing
            return [_Tok(("S", len(x))), *x]
        if t is bytearray or t is memoryview:
            return [_Tok(("B", hashlib.blake2b(x, digest_size=16).digest()))]
        if t is np.ndarray:
            base = x.base if x.base is not None else None
            off = 0
            if base is not None:
                try:
                    off = x.__array_interface__["data"][0] - np.frombuffer(base, np.uint8).__array_interface__["data"][0]
                except (TypeError, ValueError):
                    off = -1
            return [_Tok(("A", str(x.dtype), x.shape, x.strides, off)),
                    base if base is not None else _Tok(hashlib.blake2b(x.tobytes(), digest_size=16).digest())]
        if t is random.Random:
            return [_Tok(("R", hash(x.getstate())))]
        if t is types.FunctionType:
            c = x.__code__
            cells = [cl.cell_contents if _full(cl) else _Tok("<empty>") for cl in (x.__closure__ or ())]
            return [_Tok(("F", c.co_filename, c.co_firstlineno, c.co_qualname)), *cells,
                    x.__defaults__, x.__kwdefaults__]
        if t is types.MethodType:
            return [_Tok(("M", x.__func__.__qualname__)), x.__self__, x.__func__]
        if t is types.BuiltinFunctionType or t is types.BuiltinMethodType:
            return [_Tok(("BF", x.__qualname__)), getattr(x, "__self__", None) if not isinstance(
                getattr(x, "__self__", None), types.ModuleType) else None]
        if t is type or t is types.ModuleType or isinstance(x, type):
            return [_Tok(("C", getattr(x, "__qualname__", None) or x.__name__))]
        if t is types.GeneratorType or t is types.CoroutineType:
            # a suspended coroutine (sim/driver.py's driver): its code, where it stopped, its locals
            f = x.gi_frame if t is types.GeneratorType else x.cr_frame
            if f is None:
                return [_Tok(("G", "finished"))]
            c = f.f_code
            return [_Tok(("G", c.co_filename, c.co_firstlineno, c.co_qualname, f.f_lasti)), dict(f.f_locals),
                    x.gi_yieldfrom if t is types.GeneratorType else x.cr_await]
        if t is World:
            return self.world_children(x)
        if isinstance(x, (list, tuple, dict, set, frozenset, deque)):
            # a subclass (Counter, defaultdict, a NamedTuple): its contents as its base's, its
            # type and any attributes beside them (never the type alone: that would hide them)
            base = next(b for b in (dict, list, tuple, set, frozenset, deque) if isinstance(x, b))
            inner = self.children(base(x.items()) if base is dict else base(x))
            self.keep.append(inner)
            d = getattr(x, "__dict__", None) or {}
            return [_Tok(("sub", t.__module__, t.__qualname__)), *inner,
                    *(v for k, val in d.items() for v in (_Tok(k), val))]
        name = t.__name__
        if name == "Scheduler":
            # its generators are walked where the shells hold them (SimRandom._base); of its
            # own state only the names matter (rng() names a restart's generator by them)
            return [_Tok("Scheduler"), _Tok(tuple(sorted(x.streams)))]
        if name in ("_Lines", "_Watched"):
            self.histories.append(x.lines)     # hashed apart (state_keys): the checker's part
            return [_Tok((name, len(self.histories))), getattr(x, "window", None)]
        if name == "partial":
            return [_Tok("partial"), x.func, x.args, x.keywords]
        if isinstance(x, Enum):
            return [_Tok(("N", t.__module__, t.__qualname__, x.name))]   # a member: its name says it all
        if t.__module__ != "builtins":
            return self.fields(x, _layout(t))
        out = self.fields(x, _Layout(t))
        if not out[1:] and t is not object:   # object(): a sentinel, by identity
            # a builtin this walk does not know how to look into: refuse rather than guess
            raise TypeError(f"state_key: cannot walk a {t.__qualname__}")
        return out

    @staticmethod
    def fields(x: Any, lay: "_Layout") -> list[Any]:
        """A plain object: its type, then each attribute's name and value (its __dict__'s, then
        its slots', as the type's layout lists them)."""
        out: list[Any] = [lay.head]
        d = getattr(x, "__dict__", None)
        if d is not None:
            skip, toks = lay.skip, lay.toks
            for k, v in d.items():
                if k not in skip:
                    tok = toks.get(k)
                    if tok is None:
                        tok = toks[k] = _Tok(k)
                    out += (tok, v)
        for k, tok in lay.slots:
            try:
                v = getattr(x, k)
            except AttributeError:             # a slot never set
                continue
            out += (tok, v)
        return out

    def entry(self, e: list, rank: int) -> list[Any]:
        """A timer entry [t, seq, actor, callback, (stall mark)]: its seq only by rank."""
        return [_Tok(("E", rank, len(e))), e[0], e[2], e[3], *e[4:]]

    def world_children(self, w: World) -> list[Any]:
        live = sorted((e for e in w._heap if e[3] is not None), key=lambda e: (e[0], e[1]))
        self.ranks = {id(e): r + 1 for r, e in enumerate(live)}
        return [_Tok(("W", w._actors, w.done, w.stalls, w.pause_ns)), w._ready, w.processes, w._stopping, w.crashes,
                w.scheduler, _Tok(("heap", len(live))), *live]


class _Layout:
    """What the walk emits for a plain object of one type: its head token, the attributes left
    out (_SKIP), a token per attribute name, and its slots in the order the walk reads them."""

    __slots__ = ("head", "skip", "toks", "slots")

    def __init__(self, t: type) -> None:
        name = t.__name__
        self.head = _Tok(("O", t.__module__, t.__qualname__))
        self.skip = frozenset(k for n, k in _SKIP if n == name)
        self.toks: dict[str, _Tok] = {}
        self.slots = tuple((k, _Tok(k)) for cls in t.__mro__ for k in cls.__dict__.get("__slots__", ())
                           if k not in self.skip and k not in ("__dict__", "__weakref__"))


# type -> its layout, for the types walked as plain objects (a type's branch in Canon.children
# depends on the type alone, so once one is walked as a plain object every later one is too;
# builtins' types are not kept: an empty one is refused, per object)
_LAYOUT: dict[type, _Layout] = {}


def _layout(t: type) -> _Layout:
    lay = _LAYOUT.get(t)
    if lay is None:
        lay = _LAYOUT[t] = _Layout(t)
    return lay


class _Tok:
    """A token emitted as it is (not walked)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v


def _full(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ the key, written by the C pickler

def _tok(*_: Any) -> None:
    """What every reduction of Keyer names as its callable: never called (a key is never read
    back); the arguments written after it are the object's tokens."""


class Keyer(pickle.Pickler):
    """Canon's walk, written by the C pickler: the same state in the key (the module docstring:
    what is covered, what is left out) at a quarter of the cost, as the pickler visits each object
    in C and calls back into Python only for the objects it cannot write as they are. A pickle is
    a faithful encoding of an object graph (shared objects and cycles by its memo, every
    container's contents in order, every plain object's class and attributes in order), so two
    states with equal keys are equal as Canon sees them. Where it differs from a plain pickle:
    - Times. The key holds `now`, and times are written as they are (absolute): two states have
      equal keys only at one instant, where an absolute time and its offset from now say the
      same. (Canon wrote offsets; no state ever met another at another instant: the driver holds
      the workload's start and end as absolute float seconds.)
    - Timer entries ([t, seq, actor, callback, (mark)]): a seq only orders the heap, and counts
      the timers armed before; while the key is written, each live entry's seq is its rank in
      (t, seq) order and each cancelled one's 0, as the world sets a popped entry's
      (sim/world.py): an entry a service still holds is written by its place, not its count.
    - `reducer_override` (called for every object that is not a builtin container or atom): what
      it returns names the object by atoms alone and puts what the object reaches in the
      reduction's state, which the pickler writes after the object is in its memo (so a cycle
      back to it is a back-reference): functions as their code's place, closure cells, defaults;
      bound methods; suspended generators (code, where stopped, locals, what they delegate to);
      the world (its live heap in order); the scheduler (its streams' names); the sinks (kept
      apart: `histories`); the attributes _SKIP leaves out; enum members by name; arrays by their
      view of their base; random generators by a hash of their state; a checked table as its
      place in _STATIC; modules and classes by name (nothing is imported: a key is never read
      back).
    - Sets are written in their iteration order, which follows their history (Canon sorted
      them): two equal sets may then differ, a miss, never a wrong hit.
    - Constants (`_constants`: what our modules define that never changes, the strategies'
      specs with their rules, the classes, the functions with no closure, enum members) are in
      the memo before the first object is written, so each is written as a back-reference to its
      index: what it is, not what it holds, which is the same for the whole search. The
      constants' signature opens the key.
    tests/test_statecache.py checks on every fresh choice point of whole searches that this key
    and Canon's split the states the same way."""

    def __init__(self, world: World) -> None:
        self.buf = io.BytesIO()
        super().__init__(self.buf, protocol=5)
        _register_static()
        sig, memo = _constants()
        self.buf.write(sig)                   # which constants the memo holds (_constants)
        self.memo = memo                      # each constant: a back-reference, never its contents
        self.world = world
        self.histories: list[list[bytes]] = []

    def digest(self, *roots: Any) -> "hashlib._Hash":
        w = self.world
        heap = w._heap
        seqs = [e[1] for e in heap]
        live = sorted((e for e in heap if e[3] is not None), key=lambda e: (e[0], e[1]))
        try:
            for e in heap:
                e[1] = 0
            for r, e in enumerate(live, 1):
                e[1] = r
            self.dump((w.now, roots))
        finally:
            for e, seq in zip(heap, seqs):
                e[1] = seq
        return hashlib.blake2b(self.buf.getbuffer(), digest_size=20)

    def reducer_override(self, x: Any) -> Any:
        if x is _tok:
            return NotImplemented              # by reference, as the pickler writes a module's function
        t = type(x)
        how = _REDUCE.get(t)
        if how is None:
            how = _REDUCE[t] = _reduction(t)
        return how(self, x)


def _plain(k: Keyer, x: Any) -> Any:
    fixed = _STATIC.get(id(x))
    if fixed is not None and fixed[0] is x:
        return _tok, ("static", fixed[1])     # a checked table: read-only, one token
    return NotImplemented                     # the pickler's own: class, then attributes in order


def _class(k: Keyer, x: Any) -> Any:
    return _tok, ("C", getattr(x, "__module__", None), getattr(x, "__qualname__", None) or x.__name__)


def _module(k: Keyer, x: Any) -> Any:
    return _tok, ("C", x.__name__)


def _function(k: Keyer, x: Any) -> Any:
    c = x.__code__
    cells = tuple((1, cl.cell_contents) if _full(cl) else (0,) for cl in (x.__closure__ or ()))
    return _tok, (("F", c.co_filename, c.co_firstlineno, c.co_qualname),), (cells, x.__defaults__, x.__kwdefaults__)


def _method(k: Keyer, x: Any) -> Any:
    return _tok, (("M", x.__func__.__qualname__),), (x.__self__, x.__func__)


def _builtin(k: Keyer, x: Any) -> Any:
    own = getattr(x, "__self__", None)
    return _tok, (("BF", x.__qualname__),), (None if isinstance(own, types.ModuleType) else own,)


def _generator(k: Keyer, x: Any) -> Any:
    f = x.gi_frame if type(x) is types.GeneratorType else x.cr_frame
    if f is None:
        return _tok, (("G", "finished"),)
    c = f.f_code
    return _tok, (("G", c.co_filename, c.co_firstlineno, c.co_qualname, f.f_lasti),), (
        dict(f.f_locals), x.gi_yieldfrom if type(x) is types.GeneratorType else x.cr_await)


def _world(k: Keyer, w: World) -> Any:
    live = sorted((e for e in w._heap if e[3] is not None), key=lambda e: e[1])   # ranks, in Keyer.digest
    return _tok, (("W", w._actors, w.done, w.stalls, w.pause_ns),), (
        w._ready, w.processes, w._stopping, w.crashes, w.scheduler, ("heap", len(live)), tuple(live))


def _scheduler(k: Keyer, x: Any) -> Any:
    return _tok, ("Scheduler", tuple(sorted(x.streams)))


def _sink(k: Keyer, x: Any) -> Any:
    k.histories.append(x.lines)               # hashed apart (state_keys): the checker's part
    return _tok, ((type(x).__name__, len(k.histories)),), (getattr(x, "window", None),)


def _enum(k: Keyer, x: Any) -> Any:
    t = type(x)
    return _tok, ("N", t.__module__, t.__qualname__, x.name)


def _random(k: Keyer, x: Any) -> Any:
    return _tok, ("R", hash(x.getstate()))


def _view(k: Keyer, x: Any) -> Any:
    return _tok, ("B", hashlib.blake2b(x, digest_size=16).digest())


def _array(k: Keyer, x: Any) -> Any:
    base, off = x.base, 0
    if base is not None:
        try:
            off = x.__array_interface__["data"][0] - np.frombuffer(base, np.uint8).__array_interface__["data"][0]
        except (TypeError, ValueError):
            off = -1
    return _tok, (("A", str(x.dtype), x.shape, x.strides, off),), (
        base if base is not None else hashlib.blake2b(x.tobytes(), digest_size=16).digest(),)


def _skipping(skip: frozenset) -> Any:
    def reduce(k: Keyer, x: Any) -> Any:
        t = type(x)
        d = getattr(x, "__dict__", None) or {}
        slots = [(s, getattr(x, s)) for cls in t.__mro__ for s in cls.__dict__.get("__slots__", ())
                 if s not in skip and s not in ("__dict__", "__weakref__") and hasattr(x, s)]
        return _tok, (("O", t.__module__, t.__qualname__),), ([(a, v) for a, v in d.items() if a not in skip], slots)
    return reduce


def _reduction(t: type) -> Any:
    """How Keyer writes an object of type `t` (decided once per type)."""
    if issubclass(t, type):
        return _class
    if t is types.ModuleType:
        return _module
    if t is types.FunctionType:
        return _function
    if t is types.MethodType:
        return _method
    if t is types.BuiltinFunctionType or t is types.BuiltinMethodType:
        return _builtin
    if t is types.GeneratorType or t is types.CoroutineType:
        return _generator
    if t is World:
        return _world
    if issubclass(t, Enum):
        return _enum
    if issubclass(t, random.Random):
        return _random
    if t is memoryview:
        return _view
    if t is np.ndarray:
        return _array
    if t.__name__ == "Scheduler":
        return _scheduler
    if t.__name__ in ("_Lines", "_Watched"):
        return _sink
    skip = frozenset(k for n, k in _SKIP if n == t.__name__)
    if skip:
        return _skipping(skip)
    return _plain


_REDUCE: dict[type, Any] = {}


# ------------------------------------------------------------------ constants, written as one index

# The packages whose module-level constants are the same objects, unchanged, for the whole search.
_OURS = ("checker", "exporter_svc", "importer_svc", "protocol", "runtime", "sim")
_ATOM_TYPES = frozenset((type(None), bool, int, float, str, bytes))
_HELD: "pickle.Pickler | None" = None     # its memo: the constants (built once a process)
_SIG = b""


def _constant(x: Any, seen: dict[int, bool]) -> bool:
    """Whether `x` never changes and reaches nothing that does, so that writing it as its identity
    says what writing its contents said: an atom; an enum member; a class; a function with no
    closure whose defaults are constants (its code's place is all Keyer writes of it); a tuple or
    frozenset of constants; a frozen dataclass whose fields are constants, a dict among them
    counting as one when its items are (a strategy's spec holds its table as a dict: read-only,
    as protocol/machine.py's CompiledCache already takes it); a checked table (_STATIC)."""
    t = type(x)
    if t in _ATOM_TYPES:
        return True
    known = seen.get(id(x))
    if known is not None:
        return known
    seen[id(x)] = False                       # a cycle through x: not a constant
    if isinstance(x, Enum) or isinstance(x, type):
        ok = True
    elif t is types.FunctionType:
        ok = x.__closure__ is None and all(_constant(v, seen) for v in (x.__defaults__ or ())) and \
            all(_constant(v, seen) for v in (x.__kwdefaults__ or {}).values())
    elif t is tuple or t is frozenset:
        ok = all(_constant(v, seen) for v in x)
    elif t is dict:
        ok = all(_constant(k, seen) and _constant(v, seen) for k, v in x.items())
    elif id(x) in _STATIC:
        ok = True
    else:
        params = getattr(t, "__dataclass_params__", None)
        ok = params is not None and params.frozen and t.__module__.split(".")[0] in _OURS and all(
            _constant(getattr(x, f), seen) for f in t.__dataclass_fields__)
    seen[id(x)] = ok
    return ok


def _constant_objects() -> list[Any]:
    """Every constant our loaded modules define, in an order that is the same in every process
    that loaded the same modules: modules by name, then each one's names in definition order,
    into classes (their functions, nested classes, enum members), tuples, frozen dataclasses'
    fields and their dicts' items (never into a set: its order follows hashes)."""
    import sys
    out: list[Any] = []
    taken: set[int] = set()
    seen: dict[int, bool] = {}

    def take(x: Any, home: str) -> None:
        t = type(x)
        if t in _ATOM_TYPES or id(x) in taken:
            return
        if t is staticmethod or t is classmethod:
            x = x.__func__
            t = type(x)
            if id(x) in taken:
                return
        if (isinstance(x, type) or t is types.FunctionType) and getattr(x, "__module__", None) != home:
            return                            # taken in its own module, if that is loaded
        if not _constant(x, seen):
            return
        taken.add(id(x))
        out.append(x)
        if isinstance(x, type):
            for v in list(vars(x).values()):
                take(v, home)
            if issubclass(x, Enum):
                for m in x.__members__.values():
                    take(m, home)
        elif t is tuple:
            for v in x:
                take(v, home)
        elif t is dict:
            for k, v in x.items():
                take(k, home)
                take(v, home)
        elif hasattr(t, "__dataclass_fields__"):
            for f in t.__dataclass_fields__:
                take(getattr(x, f), home)

    for name in sorted(n for n in list(sys.modules) if n.split(".")[0] in _OURS):
        mod = sys.modules[name]
        if mod is None:
            continue
        for v in list(vars(mod).values()):
            if type(v) is not dict:           # a module-level dict may be a registry: only as a field
                take(v, name)
    if id(_tok) not in taken:                 # the callable of every reduction Keyer writes
        out.append(_tok)
    return out


def _describe(x: Any, said: dict[int, str]) -> str:
    """A constant's contents as text that does not depend on the process (no ids, no hash order)."""
    t = type(x)
    if t in _ATOM_TYPES:
        return repr(x)
    known = said.get(id(x))
    if known is not None:
        return known
    if isinstance(x, Enum):
        d = f"N:{t.__module__}.{t.__qualname__}.{x.name}"
    elif isinstance(x, type) or t is types.FunctionType:
        d = f"C:{x.__module__}.{x.__qualname__}"
    elif t is tuple:
        d = "(" + ",".join(_describe(v, said) for v in x) + ")"
    elif t is frozenset:
        d = "{" + ",".join(sorted(_describe(v, said) for v in x)) + "}"
    elif t is dict:
        d = "{" + ",".join(f"{_describe(k, said)}:{_describe(v, said)}" for k, v in x.items()) + "}"
    elif id(x) in _STATIC:
        d = f"T:{_STATIC[id(x)][1]}"
    else:
        d = f"D:{t.__module__}.{t.__qualname__}(" + ",".join(
            _describe(getattr(x, f), said) for f in t.__dataclass_fields__) + ")"
    said[id(x)] = d
    return d


def _constants() -> tuple[bytes, Any]:
    """(signature, memo): Keyer's memo starts as one entry per constant (_constant_objects, built
    the first time a key is taken), so the pickler writes a constant met in the world as a
    back-reference to its index, in C, with no call back into Python and none of its contents
    (a checked table's spec, its rules, the services' classes and functions: about 40% of the
    callbacks of a key, measured on revoke with three importers). The signature names the
    constants in order; it opens every key, so two processes that loaded other modules (other
    indices) never share a key (a miss, never a wrong hit: sim/search/cache.py SharedStates)."""
    global _HELD, _SIG
    if _HELD is None:
        objs = _constant_objects()
        names = hashlib.blake2b(digest_size=16)
        said: dict[int, str] = {}
        for x in objs:
            names.update(_describe(x, said).encode())
            names.update(b";")
        held = pickle.Pickler(io.BytesIO(), protocol=5)
        held.memo = {id(x): (i, x) for i, x in enumerate(objs)}
        # one entry an index, 0 to n-1: the pickler numbers the objects it meets from n on, so an
        # index shared by two constants (or left unused) would give two objects one number
        assert len(held.memo.copy()) == len(objs) == len({id(x) for x in objs}), "a constant taken twice"
        _HELD, _SIG = held, b"constants %d %s;" % (len(objs), names.hexdigest().encode())
    return _SIG, _HELD.memo


def window_of(chooser: Any) -> tuple:
    """The search's own state in the key (module docstring)."""
    w = chooser.window
    return ("window", w.open, w.closed, w.dma, w.cut, chooser.kind,
            tuple(sorted(chooser.held)) if chooser.kind != "preemptions" else ())


def state_keys(world: World, chooser: Any = None) -> tuple[bytes, bytes, bytes]:
    """(world, world at this instant, world and history at this instant): the key without the
    checker (times as offsets from now), the same with now itself, and the whole key
    (`state_key`'s, history FULL). The first two measure what the history costs."""
    c = Keyer(world)
    h = c.digest(world, window_of(chooser) if chooser is not None else None)
    k_world = h.digest()
    h.update(b"now %d" % world.now)
    k_now = h.digest()
    for lines in c.histories:
        h.update(b"lines %d" % len(lines))
        for line in lines:
            h.update(line)
    return k_world, k_now, h.digest()


def state_key(world: World, chooser: Any = None, *, history: str = FULL) -> bytes:
    """The key of the world's state at a step choice point (module docstring: what it covers)."""
    if history not in HISTORY_MODES:
        raise ValueError(f"history must be one of {', '.join(HISTORY_MODES)}, got {history!r}")
    k_world, _, k_full = state_keys(world, chooser)
    return k_full if history == FULL else k_world


# ---------------------------------------------------------------------- measuring what a cache cuts

class _Sim:
    """One simulated cache over the DFS: which fresh choice points it would cut."""

    def __init__(self) -> None:
        self.seen: dict[bytes, list[tuple[int, frozenset, Any, int, Any]]] = {}  # key -> (budget, asleep, node, now, where)
        self.hits = 0
        self.shifted = 0                      # hits whose first visit was at another instant
        self.more_asleep = 0                  # seen with enough bound, but more asleep then: no hit
        self.less_bound = 0                   # seen, but with less bound left then: no hit
        self.points = 0                       # fresh choice points the cached search would hash
        self.cut: set[int] = set()            # id(node) of the choice points it cut (on the stack)
        self.pairs: list[tuple[Any, Any]] = []   # (first visit, hit): their `where` (sampled)
        self.hit_nodes: list[tuple[Any, Any]] = []   # (first visit's node, the node it cut)

    def visit(self, key: bytes, budget: int, asleep: frozenset, node: Any, stack: list, now: int,
              where: Any = None, keep: int = 0) -> None:
        on_stack = {id(n) for n in stack}
        if any(id(n) in self.cut for n in stack):
            return                            # below a cut: the cached search never gets here
        self.points += 1
        for b, s, first, t, w in self.seen.get(key, ()):
            if b >= budget and s <= asleep and id(first) not in on_stack:
                self.hits += 1
                self.shifted += t != now
                self.cut.add(id(node))
                self.hit_nodes.append((first, node))
                if len(self.pairs) < keep:
                    self.pairs.append((w, where))
                return
        others = [(b, s) for b, s, first, _, _ in self.seen.get(key, ()) if id(first) not in on_stack]
        self.more_asleep += any(b >= budget for b, _ in others)
        self.less_bound += bool(others) and not any(b >= budget for b, _ in others)
        self.seen.setdefault(key, []).append((budget, asleep, node, now, where))

    def covers(self, stack: list) -> bool:
        return any(id(n) in self.cut for n in stack)


def measure(config: Any, bound: int, *, reduction: str = "sleep-sets", kind: str = "preemptions",
            seed: int = 0, limit: int | None = None, check_replay: int = 0,
            keep_pairs: int = 0) -> dict[str, Any]:
    """Run the exhaustive search at `bound` (no deepening; `reduction` sleep-sets or none: DPOR's
    backtrack sets are filled by its own loop, not run here) and, beside it, three simulated
    caches (keys: the world alone, the world at this instant, the world, the instant and the
    history: `state_keys`): at each fresh step choice point (one no earlier schedule went
    through), a hit is a state seen before on another path with at least as much bound left and
    no more asleep; the schedules that pass through a hit are the ones a cache would not run,
    and nothing below a hit is recorded (the cached search would not get there).
    `limit`: stop after that many schedules; `check_replay`: in the first that many schedules,
    hash every replayed choice point again and count keys that differ from its first visit's
    (`replay_mismatches`: noise in the key); `keep_pairs`: keep that many hits per key as
    ((decisions, streams) of the first visit, of the hit) for `continuation`."""
    from sim.search.dpor import NONE, SLEEP_SETS
    if reduction not in (SLEEP_SETS, NONE):
        raise ValueError(f"measure runs the sleep-sets or none search, not {reduction!r}")
    import time

    from sim.search.dpor import DporChooser
    from sim.search.exhaustive import Diverged, _backtrack_above, fence_tracing
    from sim.search.trial import run_trial

    sims = {"world": _Sim(), "world+now": _Sim(), "world+now+history": _Sim()}
    counts = {"schedules": 0, "blocked": 0, "fresh_points": 0, "key_seconds": 0.0, "distinct": {}}
    distinct: dict[str, set] = {k: set() for k in sims}
    cut_schedules = {k: 0 for k in sims}
    complete_cut = {k: 0 for k in sims}      # of them, schedules that were not blocked
    first_keys: dict[int, tuple[Any, tuple[bytes, ...]]] = {}    # id(node) -> (node, keys at its first visit)
    # id(node) -> (node, the races (kind, buffer) and end states (history digests) of every
    # schedule through it): a hit's subtree must find nothing its first visit's did not
    below: dict[int, tuple[Any, set, set]] = {}
    counts["replay_mismatches"] = 0

    class Measuring(DporChooser):
        def choose_step(self, index: int, options: Any) -> int:
            if self.depth >= len(self.stack):
                began = time.perf_counter()
                keys = state_keys(self.world, self)
                counts["key_seconds"] += time.perf_counter() - began
                counts["fresh_points"] += 1
                asleep = frozenset(self.sleep)
                budget = self.bound - self.cost
                k = super().choose_step(index, options)
                node = self.stack[-1]
                if counts["schedules"] < check_replay:
                    first_keys[id(node)] = (node, keys)
                for (name, sim), key in zip(sims.items(), keys):
                    distinct[name].add(key)
                    where = (tuple(self.world.scheduler.log.entries), tuple(self.world.scheduler.streams)) if keep_pairs else None
                    sim.visit(key, budget, asleep, node, self.stack[:-1], self.world.now, where, keep_pairs)
                return k
            if counts["schedules"] < check_replay:   # a prefix replayed: the same keys, or the key is noise
                node = self.stack[self.depth]
                if state_keys(self.world, self) != first_keys[id(node)][1]:
                    counts["replay_mismatches"] += 1
            return super().choose_step(index, options)

    stack: list = []
    with fence_tracing():
        while True:
            chooser = Measuring(seed, stack, bound, kind, reduction)
            trial = run_trial(config, chooser, setup=chooser.setup)
            if chooser.depth < len(stack):
                raise Diverged("the schedule ended early")
            counts["schedules"] += 1
            counts["blocked"] += trial.blocked
            for name, sim in sims.items():
                cut_schedules[name] += sim.covers(stack)
                complete_cut[name] += sim.covers(stack) and not trial.blocked
            races = {(r.kind, str(r.buffer)) for r in trial.races}
            for n in stack:
                got = below.get(id(n))
                if got is None:
                    got = below[id(n)] = (n, set(), set())
                got[1].update(races)
                if not trial.blocked:
                    got[2].add(trial.history_sha256)
            if limit is not None and counts["schedules"] >= limit:
                break
            if not _backtrack_above(stack, bound, 0):
                break
    return {**counts, "distinct": {k: len(v) for k, v in distinct.items()},
            "hits": {k: s.hits for k, s in sims.items()}, "shifted_hits": {k: s.shifted for k, s in sims.items()},
            "more_asleep": {k: s.more_asleep for k, s in sims.items()},
            "less_bound": {k: s.less_bound for k, s in sims.items()},
            "points_hashed": {k: s.points for k, s in sims.items()},
            "complete_cut": complete_cut,
            "lost": {k: _lost(s.hit_nodes, below) for k, s in sims.items()},
            "schedules_cut": cut_schedules,
            "pairs": {k: s.pairs for k, s in sims.items()} if keep_pairs else None}


def labelled(world: World, chooser: Any = None) -> list[tuple[str, Any]]:
    """The key's token stream with where each token came from (a path of fields from the
    world): for telling why two states differ (`differences`)."""
    c = Canon(world)
    out: list[tuple[str, Any]] = []
    stack: list[tuple[Any, str]] = [(world, "world")]
    while stack:
        x, path = stack.pop()
        t = type(x)
        if t is _Tok:
            out.append((path, x.v))
            continue
        if t is int:
            out.append((path, ("T", x - c.now) if x >= c.t0 else x))
            continue
        if t in _ATOMS:
            out.append((path, x))
            continue
        seen = c.memo.get(id(x))
        if seen is not None:
            out.append((path, ("@", seen)))
            continue
        c.memo[id(x)] = len(c.memo)
        c.keep.append(x)
        kids = c.children(x)
        named: list[tuple[Any, str]] = []
        label = ""
        for k in kids:
            if type(k) is _Tok and type(k.v) is str:
                label = k.v
                named.append((k, f"{path}.{label}"))
            else:
                named.append((k, f"{path}.{label}" if label else f"{path}[]"))
        stack.extend(reversed(named))
    for i, lines in enumerate(c.histories):
        out.append((f"history[{i}]", hashlib.blake2b(b"".join(lines), digest_size=8).hexdigest()))
    return out


def differences(a: list[tuple[str, Any]], b: list[tuple[str, Any]], most: int = 5) -> list[str]:
    """The first places two labelled token streams differ."""
    import difflib
    sm = difflib.SequenceMatcher(a=[repr(t) for t in a], b=[repr(t) for t in b], autojunk=False)
    out = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op != "equal":
            out.append(f"{op}: {a[i1:i2][:3]} | {b[j1:j2][:3]}")
            if len(out) >= most:
                break
    return out


# ---------------------------------------------------------------------- validating a hit

def _lost(hits: list[tuple[Any, Any]], below: dict[int, tuple[Any, set, set]]) -> dict[str, Any]:
    """Of the hits, how many cut a subtree that found a race or an end state its first visit's
    subtree did not (the cache would lose it), and the races it would lose."""
    out: dict[str, Any] = {"hits": len(hits), "races": 0, "ends": 0, "lost_races": set(), "found": set()}
    for first, cut in hits:
        _, r1, e1 = below.get(id(first), (None, set(), set()))
        _, r2, e2 = below.get(id(cut), (None, set(), set()))
        out["found"] |= r2
        out["races"] += bool(r2 - r1)
        out["lost_races"] |= r2 - r1
        out["ends"] += bool(e2 - e1)
    out["lost_races"] = sorted(out["lost_races"])
    out["found"] = sorted(out["found"])
    return out


def continuation(config: Any, prefix: tuple[tuple, ...], streams: tuple[str, ...], walk: int) -> dict[str, Any]:
    """Run `prefix` (a decision log up to a step choice point), then a random walk seeded `walk`
    (sim/search/random.py) to the end: the verdicts on the whole history, and the history after
    the choice point (each service's lines from there on), with the instant of the choice point."""
    from pathlib import Path

    from sim.run import _execute, merged
    from sim.search.random import RandomChooser
    from sim.search.trial import PrefixGuide, _Watched, judge
    from sim.scheduler import DecisionLog, Scheduler

    sinks: dict[str, _Watched] = {}
    split: dict[str, Any] = {}
    chooser = RandomChooser(0, walk)
    window = chooser.window

    def sink_for(svc: str) -> _Watched:
        return sinks.setdefault(svc, _Watched(window))

    class Guide(PrefixGuide):
        def suggest(self, request: Any) -> Any | None:
            if request.index == len(self.entries) and not split:
                split["now"] = request.now
                split["at"] = {svc: len(s.lines) for svc, s in sinks.items()}
            return super().suggest(request)

    log = DecisionLog()
    scheduler = Scheduler(config.params.seed, chooser=chooser, guide=Guide(prefix, streams), log=log)

    def prepare(world: Any) -> None:
        window.world = world

    _execute(config.params, Path("/nonexistent-sim-run"), scheduler, sink_for, config.options, prepare)
    races, _ = judge(list(merged(sinks)))
    at, now = split["at"], split["now"]
    suffix = {svc: [shifted(line, -now) for line in s.lines[at.get(svc, 0):]] for svc, s in sinks.items()}
    past = {svc: s.lines[:at.get(svc, 0)] for svc, s in sinks.items()}
    return {"races": sorted({(r.kind, str(r.buffer)) for r in races}), "suffix": suffix, "now": now, "past": past}


def shifted(line: bytes, by: int) -> bytes:
    """An event line with its t_ns moved by `by` (the line ends with "t_ns":<int>})."""
    i = line.rindex(b":") + 1
    return line[:i] + str(int(line[i:-2]) + by).encode() + line[-2:]
