"""python -m deploy.bench.echo ENDPOINT: the transport floor's other end.

A ROUTER with the services' socket options (runtime.transport) that unpacks each msgpack
request and answers it with a map-reply-shaped msgpack message echoing the id: what a
round trip costs with nothing but pyzmq and msgpack in it. Stops on SIGTERM or a request whose
op is "bye".
"""

from __future__ import annotations

import signal
import sys

import msgpack
import zmq

from runtime import transport

REPLY = {"v": 1, "op": "map", "id": 0, "ok": True,
         "placement": {"heap": "vram", "offset": 0, "size": 65536, "gen": 1}, "moved": False, "fence": 0}


def main(argv: list[str] | None = None) -> int:
    endpoint = (argv if argv is not None else sys.argv[1:])[0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = zmq.Context()
    sock, bound = transport.router(ctx, endpoint)
    print(bound, flush=True)
    reply = dict(REPLY)
    try:
        while True:
            peer, frame = sock.recv_multipart()
            req = msgpack.unpackb(frame, raw=False)
            reply["id"] = req["id"]
            sock.send_multipart([peer, msgpack.packb(reply, use_bin_type=True)])
            if req.get("op") == "bye":
                return 0
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    sys.exit(main())
