"""A lean HTTP/1.1 responder that records when each request arrived: the benchmarks' target.

    python -m bench.target [--ports N] [--hang-ports M]

It listens on N ports (each one a distinct origin for the daemon) plus M "hang" ports where
every request is read and never answered (a service that hangs until the client's timeout).
Every request is answered `200 {"status":"ok"}` unless its first path segment (the window's
prefix, e.g. `/w0007/health` -> `w0007`) was switched to a status code or to `hang`.

For each request it records the arrival (`time.time()` when its headers were read), when the
answer was written, the status, the port and the path. Nothing but the requests themselves
goes over HTTP: the harness drives it with lines on stdin, one reply line each on stdout:

    mode PREFIX ok|hang|CODE      switch a prefix
    dump PATH [START]             write the records (from index START) as TSV: arrival, sent,
                                  status, port, path
    stats                         `ok REQUESTS CONNECTIONS` seen so far
    clear                         forget the records
    quit (or end of input)        exit

The first stdout line is `{"ports": [...], "hang_ports": [...]}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

OK_BODY = b'{"status":"ok"}'
FAIL_BODY = b'{"status":"fail"}'
REASONS = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error", 503: b"Unavailable"}
HANG = -1

# (arrival, sent, status, port, path); `sent` is 0.0 for a request never answered.
Record = tuple[float, float, int, int, str]


class State:
    """What the responder does and what it saw."""

    def __init__(self) -> None:
        self.modes: dict[str, int] = {}  # prefix -> status code, or HANG
        self.records: list[Record] = []
        self.connections = 0  # accepted so far: with keep-alive, far fewer than requests


def _response(code: int) -> bytes:
    body = OK_BODY if code == 200 else FAIL_BODY
    reason = REASONS.get(code, b"Status")
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        code,
        reason,
        len(body),
        body,
    )


_RESPONSES = {code: _response(code) for code in (200, 404, 500, 503)}


class Http(asyncio.Protocol):
    """One connection: keep-alive HTTP/1.1, requests answered in order."""

    def __init__(self, state: State, port: int, hang_all: bool) -> None:
        self.state = state
        self.port = port
        self.hang_all = hang_all
        self.buf = b""
        self.hung = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state.connections += 1

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.hung:
            return  # a hung request holds the connection until the client gives up
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or b"0")
            if len(self.buf) < end + 4 + length:
                return  # the body is still on its way
            self.buf = self.buf[end + 4 + length :]
            parts = head.split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            prefix = path.split("/", 2)[1] if path.count("/") >= 1 else ""
            code = HANG if self.hang_all else self.state.modes.get(prefix, 200)
            if code == HANG:
                self.state.records.append((now, 0.0, 0, self.port, path))
                self.hung = True
                return
            assert self.transport is not None
            self.transport.write(_RESPONSES.get(code) or _response(code))
            self.state.records.append((now, time.time(), code, self.port, path))


def _dump(state: State, path: str, start: int = 0) -> int:
    records = state.records[start:]
    with open(path, "w") as f:
        for arrival, sent, code, port, p in records:
            f.write(f"{arrival:.6f}\t{sent:.6f}\t{code}\t{port}\t{p}\n")
    return len(records)


def _command(state: State, line: str) -> str | None:
    """Run one control line; the reply, or None to exit."""
    words = line.split()
    if not words or words[0] == "quit":
        return None
    if words[0] == "mode" and len(words) == 3:
        state.modes[words[1]] = (
            HANG if words[2] == "hang" else 200 if words[2] == "ok" else int(words[2])
        )
        return "ok"
    if words[0] == "dump" and len(words) in (2, 3):
        return f"ok {_dump(state, words[1], int(words[2]) if len(words) == 3 else 0)}"
    if words[0] == "stats":
        return f"ok {len(state.records)} {state.connections}"
    if words[0] == "clear":
        state.records.clear()
        return "ok"
    return f"error unknown command {line!r}"


async def main(ports: int, hang_ports: int) -> None:
    loop = asyncio.get_running_loop()
    state = State()
    servers = []
    for i in range(ports + hang_ports):
        hang_all = i >= ports
        holder: dict[str, int] = {}

        def factory(holder: dict[str, int] = holder, hang_all: bool = hang_all) -> Http:
            return Http(state, holder["port"], hang_all)

        server = await loop.create_server(factory, "127.0.0.1", 0, backlog=4096)
        holder["port"] = server.sockets[0].getsockname()[1]
        servers.append((server, holder["port"], hang_all))
    print(
        json.dumps(
            {
                "ports": [p for _, p, h in servers if not h],
                "hang_ports": [p for _, p, h in servers if h],
            }
        ),
        flush=True,
    )
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        reply = _command(state, raw.decode().strip()) if raw else None
        if reply is None:
            break
        print(reply, flush=True)
    for server, _, _ in servers:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=1)
    parser.add_argument("--hang-ports", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.ports, args.hang_ports))
