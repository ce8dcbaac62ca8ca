"""The simulated network: the runtime/transport.py Channel interface over in-process links that
carry the same encoded frames, each after a delay the scheduler draws.

Rules:
- A router is bound at an endpoint name (`sim://exporter/rpc`, `sim://importer-1/control`);
  a dealer connects to one under an identity. A dealer connecting under an identity already in
  use takes it over (ROUTER_HANDOVER: a restarted importer comes back under its name).
- Each frame is delivered after `delay` nanoseconds, drawn from the sending process's stream
  `net:<sender>`: MIN_NS plus an exponential of mean MEAN_NS, at most MAX_NS. The order of the
  frames of one link (one sender channel to one receiver channel) is kept, as a zmq connection
  keeps it: a frame never arrives before the one sent ahead of it on its link. Message faults
  (delay, drop, dup, reorder) are not here: they are runtime/msgfaults.py in the sender's shell,
  the same code as in real runs.
- A frame for a peer that is not connected (ROUTER_MANDATORY off), or that arrives at a closed
  channel (its process died or exited), is dropped. A frame already sent by a process that dies
  still arrives: it had left the process.
- Socket options with no counterpart here: high-water marks, MAXMSGSIZE, CURVE (`secure` is
  refused: the simulator never runs CURVE).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

from sim.scheduler import Scheduler
from sim.world import ActorLoop, World

MIN_NS = 30_000          # one-way: an ipc hop between two processes that are awake
MEAN_NS = 70_000         # plus an exponential tail (a busy receiver, a context switch)
MAX_NS = 2_000_000


class SimChannel:
    """One end: an inbox, and a reader the loop calls when frames are waiting."""

    def __init__(self, net: "SimNetwork", owner: str) -> None:
        self.net = net
        self.owner = owner
        self.inbox: deque[list[bytes]] = deque()
        self.closed = False
        self._reader: tuple[ActorLoop, Callable[[], None]] | None = None
        self._armed = False
        self._last: dict[Any, int] = {}     # receiver channel -> arrival time of our last frame to it

    def set_reader(self, loop: ActorLoop | None, callback: Callable[[], None] | None) -> None:
        self._reader = None if loop is None else (loop, callback)  # type: ignore[assignment]
        self._arm()

    def _arm(self) -> None:
        if self.inbox and self._reader is not None and not self._armed:
            self._armed = True
            self._reader[0].call_soon(self._read)

    def _read(self) -> None:
        self._armed = False
        if self._reader is not None and not self.closed:
            self._reader[1]()
            self._arm()                      # still readable: called again, as a poll would

    def deliver(self, parts: list[bytes]) -> None:
        if self.closed:
            self.net.dropped += 1
            return
        self.inbox.append(parts)
        self._arm()

    def recv(self) -> list[bytes] | None:
        return self.inbox.popleft() if self.inbox else None

    def _send_to(self, dest: "SimChannel", parts: list[bytes]) -> None:
        world = self.net.world
        t = world.now + self.net.delay_ns(self.owner)
        last = self._last.get(dest)
        if last is not None and t < last:
            t = last                          # a link keeps its order
        self._last[dest] = t
        world.push(t, None, lambda: dest.deliver(parts))
        self.net.frames += 1

    def close(self) -> None:
        self.closed = True
        self.inbox.clear()
        self._reader = None


class SimRouter(SimChannel):
    def __init__(self, net: "SimNetwork", owner: str, endpoint: str, handover: bool) -> None:
        super().__init__(net, owner)
        self.endpoint = endpoint
        self.handover = handover
        self.peers: dict[bytes, "SimDealer"] = {}

    def send(self, peer: bytes, frame: bytes) -> None:
        dealer = self.peers.get(peer)
        if dealer is None or dealer.closed:
            self.net.dropped += 1            # nobody there: dropped silently (ROUTER_MANDATORY off)
            return
        self._send_to(dealer, [frame])

    def close(self) -> None:
        super().close()
        if self.net.routers.get(self.endpoint) is self:
            del self.net.routers[self.endpoint]


class SimDealer(SimChannel):
    def __init__(self, net: "SimNetwork", owner: str, endpoint: str, identity: bytes) -> None:
        super().__init__(net, owner)
        self.endpoint = endpoint
        self.identity = identity
        router = net.routers.get(endpoint)
        if router is not None and (router.handover or identity not in router.peers):
            router.peers[identity] = self

    def send(self, peer: bytes, frame: bytes) -> None:
        router = self.net.routers.get(self.endpoint)
        if router is None:
            self.net.dropped += 1            # nobody bound there (yet, or any more)
            return
        current = router.peers.setdefault(self.identity, self)   # connected before the bind
        if current is not self:
            self.net.dropped += 1            # our identity was taken over
            return
        self._send_to(router, [self.identity, frame])


class SimNetwork:
    def __init__(self, world: World, scheduler: Scheduler, seed: int) -> None:
        self.world = world
        self.scheduler = scheduler
        self.seed = seed
        self.routers: dict[str, SimRouter] = {}
        self._rngs: dict[str, Any] = {}
        self.frames = 0
        self.dropped = 0
        self._anon = 0

    def delay_ns(self, sender: str) -> int:
        rng = self._rngs.get(sender)
        if rng is None:
            rng = self._rngs[sender] = self.scheduler.rng(f"net:{sender}", f"{self.seed}:net:{sender}")
        u = rng.random()
        return min(MAX_NS, MIN_NS + int(-MEAN_NS * math.log1p(-u)))

    def transport(self, owner: str) -> "SimTransport":
        return SimTransport(self, owner)


class SimTransport:
    """runtime/transport.Transport for one simulated process."""

    def __init__(self, net: SimNetwork, owner: str) -> None:
        self.net = net
        self.owner = owner
        self.channels: list[SimChannel] = []

    def router(self, endpoint: str, *, handover: bool = False, secure: Any = None) -> tuple[SimRouter, str]:
        if secure is not None:
            raise ValueError("the simulator has no CURVE")
        if endpoint in self.net.routers:
            raise ValueError(f"{endpoint}: address already in use")
        r = SimRouter(self.net, self.owner, endpoint, handover)
        self.net.routers[endpoint] = r
        self.channels.append(r)
        return r, endpoint

    def dealer(self, endpoint: str, identity: bytes | None = None, secure: Any = None) -> SimDealer:
        if secure is not None:
            raise ValueError("the simulator has no CURVE")
        if identity is None:
            self.net._anon += 1
            identity = b"\x00anon-%d" % self.net._anon
        d = SimDealer(self.net, self.owner, endpoint, identity)
        self.channels.append(d)
        return d

    def close(self) -> None:
        for c in self.channels:
            c.close()
        self.channels.clear()
