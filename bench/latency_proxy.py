#!/usr/bin/env python3
"""A TCP proxy that adds internet-like latency (and optionally a bandwidth cap) in front of a
loopback registry, and records every HTTP/1.1 request that passes through it.

    bench/latency_proxy.py --upstream 127.0.0.1:5000 --rtt-ms 50 [--rate-mbit 200]
                           [--listen 127.0.0.1:0] [--events FILE] [--buffer-kib 4096]

Prints `listening on HOST:PORT` once it accepts connections; stops on SIGTERM or SIGINT.
Standard library only (asyncio). What it does, exactly (bench/README.md says the same):

- Every accepted connection gets its own connection to the upstream. Bytes in each direction
  are read as they come (up to 64 KiB at a time), stamped with the time they arrived, and put in
  that direction's FIFO; a writer task takes them out in order and forwards each piece no earlier
  than `arrival + RTT / 2`. The delay is a timestamped queue, not a sleep per read, so a
  connection's throughput is not divided by the delay: many pieces are in flight at once.
- Connection set-up costs one round trip, as a TCP handshake does: the kernel completes the
  client's `connect()` on loopback at once, so bytes the client sends are treated as sent no
  earlier than `accept + RTT` (then delayed by RTT / 2 like any other). The upstream connection
  itself is opened at accept time and costs nothing.
- Bandwidth cap (`--rate-mbit`): one pacer per direction, shared by all connections, like one
  access link: a piece may leave only when the previous pieces of that direction have been
  "transmitted" at the set rate (a virtual clock that makes up for timer overshoot; after an
  idle link, a burst of at most 5 ms worth of bytes). A piece
  enters the pacer only once its delay has elapsed, and each connection offers one piece at a
  time, so connections share the link roughly fairly.
- At most `--buffer-kib` (default 4096) of one direction of one connection are held in the proxy;
  beyond that it stops reading that socket, so TCP flow control pushes back on the sender. That
  bounds one connection at about buffer / (RTT / 2) (160 MiB/s at 50 ms), a modest TCP window.
- Not modelled: packet loss, slow start, reordering, jitter; TLS (the upstream is plain HTTP).
- HTTP accounting: the client-to-server bytes of each connection are parsed as HTTP/1.1 requests
  (request line and headers; a `Content-Length` body is skipped; a connection whose first byte is
  0x16, a TLS ClientHello, is recorded as one request with method `TLS-PROBE` (the plain-HTTP
  upstream answers it with a 400) and not parsed further; a chunked request body ends
  parsing on that connection, recorded as `unparsed`). Clients here do not pipeline, so the first
  server-to-client bytes that arrive after a request was forwarded are that request's response.
  With `--events FILE` one JSON object per line is appended (times are `time.monotonic()`, the
  CLOCK_MONOTONIC every process on the machine shares):
    {"e": "open", "c": CONN, "t": ACCEPT, "ready": ACCEPT + RTT}
    {"e": "req", "c": CONN, "r": ID, "t": SENT, "m": METHOD, "p": PATH}
        SENT: when the request's first byte reached the proxy, or `ready` if later
    {"e": "resp", "c": CONN, "r": ID, "t": DELIVERED, "s": STATUS}
        DELIVERED: when the first byte of its response was written to the client
    {"e": "tls-probe" | "unparsed", "c": CONN, "t": T}
    {"e": "close", "c": CONN, "t": T}
"""
import argparse
import asyncio
import collections
import json
import signal
import sys
import time

CHUNK = 64 * 1024
IDLE_S = 0.005


class Pacer:
    """A shared link of `rate` bytes per second (None: unlimited), as a virtual clock."""

    def __init__(self, rate):
        self.rate = rate
        self.free_at = 0.0

    async def send(self, n):
        if not self.rate:
            return
        now = time.monotonic()
        # The event loop's timers have about 1 ms resolution and sleeps overshoot: the clock
        # keeps running from where the last piece left (not from now) unless the link has been
        # idle for more than IDLE_S, so an overshoot is made up and the average rate is exact;
        # a burst after a pause is at most IDLE_S worth of bytes.
        if self.free_at < now - IDLE_S:
            self.free_at = now - IDLE_S
        self.free_at += n / self.rate
        wait = self.free_at - now
        if wait > 0.002:
            await asyncio.sleep(wait)


class Events:
    def __init__(self, path):
        self.file = open(path, "a", buffering=1) if path else None

    def __call__(self, **fields):
        if self.file:
            self.file.write(json.dumps(fields, separators=(",", ":")) + "\n")


class RequestParser:
    """Finds where HTTP/1.1 requests start in a client-to-server byte stream."""

    def __init__(self):
        self.header = b""
        self.skip = 0          # body bytes still to pass over
        self.broken = None     # why parsing stopped ("tls-probe", "unparsed")
        self.started = False

    def feed(self, data):
        """Returns (method, path) for each request whose request line begins in `data`."""
        found = []
        if not self.started and data:
            self.started = True
            if data[0] == 0x16:
                # A TLS ClientHello (skopeo tries HTTPS first): one exchange, not parsed further.
                self.broken = "tls-probe"
                found.append(("TLS-PROBE", ""))
        while data and not self.broken:
            if self.skip:
                taken = min(self.skip, len(data))
                self.skip -= taken
                data = data[taken:]
                continue
            if not self.header:
                # Tolerate stray CRLF between requests (RFC 9112, 2.2).
                data = data.lstrip(b"\r\n")
                if not data:
                    break
                line = data.split(b"\r\n", 1)[0].split(b" ")
                found.append((line[0].decode("latin-1"),
                              line[1].decode("latin-1") if len(line) > 1 else ""))
            self.header += data
            end = self.header.find(b"\r\n\r\n")
            if end < 0:
                if len(self.header) > 1 << 20:
                    self.broken = "unparsed"
                break
            head, data = self.header[:end], self.header[end + 4:]
            self.header = b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.skip = int(value.strip() or 0)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.broken = "unparsed"
        return found


class Proxy:
    def __init__(self, args):
        self.upstream = args.upstream.rsplit(":", 1)
        self.delay = args.rtt_ms / 2000.0
        self.rtt = args.rtt_ms / 1000.0
        rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit else None
        self.up_link = Pacer(rate)      # client -> server
        self.down_link = Pacer(rate)    # server -> client
        self.buffer = args.buffer_kib * 1024
        self.events = Events(args.events)
        self.connections = 0
        self.requests = 0

    async def handle(self, client_reader, client_writer):
        accepted = time.monotonic()
        self.connections += 1
        conn = self.connections
        ready = accepted + self.rtt
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream[0], int(self.upstream[1]))
        except OSError:
            client_writer.close()
            return
        self.events(e="open", c=conn, t=accepted, ready=ready)
        forwarded = collections.deque()   # request ids forwarded upstream, awaiting a response
        parser = RequestParser()

        def on_request_bytes(data, arrived):
            sent = max(arrived, ready)
            ids = []
            for method, path in parser.feed(data):
                self.requests += 1
                ids.append(self.requests)
                self.events(e="req", c=conn, r=self.requests, t=sent, m=method, p=path)
            if parser.broken and parser.broken != "reported":
                self.events(e=parser.broken, c=conn, t=arrived)
                parser.broken = "reported"
            return ids

        def on_forwarded(ids):
            forwarded.extend(ids)

        def on_response_bytes(data, arrived):
            if forwarded:
                status = None
                if data.startswith(b"HTTP/1."):
                    parts = data.split(b" ", 2)
                    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
                return [(forwarded.popleft(), status)]
            return []

        def on_delivered(tags):
            for request, status in tags:
                self.events(e="resp", c=conn, r=request, t=time.monotonic(), s=status)

        await asyncio.gather(
            self.pump(client_reader, up_writer, self.up_link, ready, on_request_bytes, on_forwarded),
            self.pump(up_reader, client_writer, self.down_link, 0.0, on_response_bytes, on_delivered),
            return_exceptions=True)
        for writer in (client_writer, up_writer):
            writer.close()
        self.events(e="close", c=conn, t=time.monotonic())

    async def pump(self, reader, writer, link, not_before, tag, on_written):
        """Forward one direction: read, stamp, queue; a second task delivers after the delay."""
        queue = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        held = [0]

        async def deliver():
            broken = False   # the receiver is gone: discard the rest, keep the reader going
            while True:
                due, data, tags = await queue.get()
                if data is None:
                    break
                if not broken:
                    wait = due - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await link.send(len(data))
                    try:
                        writer.write(data)
                        on_written(tags)
                        await writer.drain()
                    except (ConnectionError, OSError):
                        broken = True
                held[0] -= len(data)
                if held[0] < self.buffer:
                    room.set()
            try:
                if not broken and writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                await room.wait()
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                arrived = time.monotonic()
                if not data:
                    break
                held[0] += len(data)
                if held[0] >= self.buffer:
                    room.clear()
                queue.put_nowait((max(arrived, not_before) + self.delay, data, tag(data, arrived)))
        finally:
            queue.put_nowait((0.0, None, None))
            await delivering


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the (plain HTTP) registry")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="round-trip time to add")
    parser.add_argument("--rate-mbit", type=float, default=0.0,
                        help="bandwidth cap per direction, shared by all connections (0: none)")
    parser.add_argument("--buffer-kib", type=int, default=4096,
                        help="bytes held per connection and direction before reading pauses")
    parser.add_argument("--events", help="append one JSON line per connection, request and response")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("latency_proxy: loopback addresses only")
    proxy = Proxy(args)
    server = await asyncio.start_server(proxy.handle, host, int(port), backlog=512)
    address = server.sockets[0].getsockname()
    print(f"listening on {address[0]}:{address[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
