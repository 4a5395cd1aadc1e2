#!/usr/bin/env python3
"""A WebSocket peer built on the Python `websockets` library, for wsloop's interoperability tests.

Run by tests/interop_python.rs with the venv made by scripts/install-peers.sh. tests/peers/ws_peer.js
is the same program for Node's `ws`; keep the two in step (and the script constants in
tests/interop_support/mod.rs).

SERVER MODE (their server <- our client)

    ws_peer.py server [--protocols p1,p2]

Binds 127.0.0.1 port 0 and prints `PORT <n>`, then one line per event:

    OPEN <path> <subprotocol or ->   a connection was accepted
    PONG <hex>                       the pong answering a ping it sent on `cmd:ping` arrived
    CLOSED <code> <hex reason>       the close frame it received (`CLOSED 1006 -` if none)

Subprotocols: it picks the first protocol the client offers that is in --protocols (client
preference order), or none. Each connection echoes every message unchanged, except that
  - on path /frag, each message is echoed split into 3 fragments at byte offsets n/3 and 2n/3
    (text is split as raw UTF-8, possibly inside a character; websockets then adds an empty
    final frame: frames [a, b, c, 0]);
  - the text `cmd:ping <payload>` makes it send a ping with that payload;
  - the text `cmd:close <code> <reason>` makes it close with that code and reason.
It exits when its stdin closes (so it never outlives the test that started it).

CLIENT MODE (their client -> our server)

    ws_peer.py client <url> <scenario> [--protocols a,b] [--expect-protocol p|-] [--connections n]

Scenarios (see each function): echo, frag, server-close, concurrent. Exits 0 only if every
check passed; prints `FAIL: ...` for each failed check otherwise.
"""

import argparse
import asyncio
import os
import sys
import threading

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

UTF8 = "héllo wörld — 日本語 — 🦀🎉 — ∑≠∞"
BINARY_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20, 16 << 20]
# Text split inside multi-byte characters: cut 1 byte into the 3-byte "✓" and 2 bytes into "🦀".
FRAG_TEXT = "fragmented ✓ 日本語 🦀!"
TIMEOUT = 20.0


def pattern(n):
    """n deterministic bytes: byte k is (7k + n) mod 251 (the same in every peer and in Rust)."""
    period = bytes((k * 7 + n) % 251 for k in range(251))
    return (period * (n // 251 + 1))[:n]


def script():
    """The echo scenario's messages, in order (mirrored by interop_support::script_messages)."""
    msgs = ["hello", "", UTF8, UTF8 * 3000]
    msgs += [pattern(n) for n in BINARY_SIZES]
    return msgs


def frag_text_chunks():
    b = FRAG_TEXT.encode()
    i = b.index("✓".encode()) + 1
    j = b.index("🦀".encode()) + 2
    return [b[:i], b[i:j], b[j:]]


def describe(m):
    if isinstance(m, str):
        return f"text({len(m.encode())} B: {m[:40]!r})"
    return f"binary({len(m)} B: {m[:16].hex()}...)"


class Checker:
    def __init__(self):
        self.failures = []

    def check(self, ok, what):
        if not ok:
            self.failures.append(what)
            print(f"FAIL: {what}", flush=True)
        return ok


def hexs(b):
    return b.hex() if b else "-"


# ---------------------------------------------------------------- server


async def run_server(protocols):
    supported = [p for p in protocols.split(",") if p]

    def select(_conn, offered):
        for p in offered:
            if p in supported:
                return p
        return None

    async def handler(ws):
        path = ws.request.path
        print(f"OPEN {path} {ws.subprotocol or '-'}", flush=True)
        frag = path.startswith("/frag")
        pongs = []
        try:
            async for msg in ws:
                if isinstance(msg, str) and msg.startswith("cmd:ping "):
                    payload = msg[len("cmd:ping "):].encode()
                    waiter = await ws.ping(payload)
                    pongs.append(asyncio.ensure_future(report_pong(waiter, payload)))
                elif isinstance(msg, str) and msg.startswith("cmd:close "):
                    _, code, reason = msg.split(" ", 2)
                    await ws.close(int(code), reason)
                elif frag:
                    data = msg.encode() if isinstance(msg, str) else msg
                    n = len(data)
                    chunks = [data[: n // 3], data[n // 3 : 2 * n // 3], data[2 * n // 3 :]]
                    await ws.send(chunks, text=isinstance(msg, str))
                else:
                    await ws.send(msg)
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        if rcvd is None:
            print("CLOSED 1006 -", flush=True)
        else:
            print(f"CLOSED {rcvd.code} {hexs(rcvd.reason.encode())}", flush=True)

    async def report_pong(waiter, payload):
        try:
            await asyncio.wait_for(waiter, TIMEOUT)
            print(f"PONG {hexs(payload)}", flush=True)
        except (asyncio.TimeoutError, ConnectionClosed):
            print(f"NOPONG {hexs(payload)}", flush=True)

    async with serve(
        handler,
        "127.0.0.1",
        0,
        select_subprotocol=select,
        max_size=None,
        ping_interval=None,
        close_timeout=3,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


def exit_when_stdin_closes():
    def watch():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


# ---------------------------------------------------------------- client


def client_opts():
    return dict(max_size=None, ping_interval=None, close_timeout=3, open_timeout=TIMEOUT)


async def expect_echo(ws, sent, c, label):
    try:
        got = await asyncio.wait_for(ws.recv(), TIMEOUT)
    except (asyncio.TimeoutError, ConnectionClosed) as e:
        c.check(False, f"{label}: no echo of {describe(sent)}: {e!r}")
        return False
    return c.check(
        type(got) is type(sent) and got == sent,
        f"{label}: sent {describe(sent)}, echo was {describe(got)}",
    )


async def expect_pong(waiter, payload, c, label):
    try:
        await asyncio.wait_for(waiter, TIMEOUT)
    except (asyncio.TimeoutError, ConnectionClosed) as e:
        c.check(False, f"{label}: no pong for ping {payload!r}: {e!r}")


async def close_and_check(ws, code, reason, c, label):
    await asyncio.wait_for(ws.close(code, reason), TIMEOUT)
    rcvd = ws.protocol.close_rcvd
    c.check(rcvd is not None, f"{label}: no close frame came back after close({code}, {reason!r})")
    if rcvd is not None:
        c.check(rcvd.code == code, f"{label}: sent close code {code}, the answer had {rcvd.code}")


async def scenario_echo(url, args, c):
    """Texts (multi-byte UTF-8, 0 B, >64 KiB) and binaries 0 B..16 MiB, each echoed byte-exact;
    our ping answered with its payload; a `cmd:ping srv-ping` for the server's ping; close 4000
    "bye", whose code must come back."""
    protocols = [p for p in args.protocols.split(",") if p] or None
    async with connect(url, subprotocols=protocols, **client_opts()) as ws:
        want = None if args.expect_protocol == "-" else args.expect_protocol
        c.check(ws.subprotocol == want, f"echo: negotiated subprotocol {ws.subprotocol!r}, expected {want!r}")
        for m in script():
            await ws.send(m)
            await expect_echo(ws, m, c, "echo")
        payload = b"py-ping\x00\xff"
        await expect_pong(await ws.ping(payload), payload, c, "echo")
        await ws.send("cmd:ping srv-ping")
        # The server's ping is answered by websockets itself; a message round trip after it
        # makes sure the pong went out before we close.
        await ws.send("after ping")
        await expect_echo(ws, "after ping", c, "echo")
        await close_and_check(ws, 4000, "bye", c, "echo")


async def scenario_frag(url, args, c):
    """Fragmented messages (websockets sends every item of an iterable as a frame, then an empty
    final frame): text split inside UTF-8 characters, binary with an empty fragment, and 1 MiB in
    16 fragments with a ping between fragments 8 and 9. Each echo must be the whole message."""
    async with connect(url, **client_opts()) as ws:
        chunks = frag_text_chunks()
        await ws.send(chunks, text=True)
        await expect_echo(ws, FRAG_TEXT, c, "frag text")

        chunks = [b"\x00\x01\x02", b"", pattern(70000)]
        await ws.send(chunks)
        await expect_echo(ws, b"".join(chunks), c, "frag binary")

        big = pattern(1 << 20)
        pong = {}

        async def fragments():
            for k in range(16):
                yield big[k * 65536 : (k + 1) * 65536]
                if k == 7:
                    pong["waiter"] = await ws.ping(b"mid-frag")

        await ws.send(fragments())
        await expect_echo(ws, big, c, "frag 1 MiB")
        await expect_pong(pong["waiter"], b"mid-frag", c, "frag 1 MiB")
        await close_and_check(ws, 1000, "", c, "frag")


async def scenario_server_close(url, args, c):
    """Ask our server to close with 4001 and a UTF-8 reason; the close must arrive exactly."""
    async with connect(url, **client_opts()) as ws:
        await ws.send("cmd:close 4001 adiós ✓")
        try:
            m = await asyncio.wait_for(ws.recv(), TIMEOUT)
            c.check(False, f"server-close: expected the server to close, got message {describe(m)}")
        except ConnectionClosed as e:
            rcvd = e.rcvd
            c.check(rcvd is not None, "server-close: connection ended without a close frame")
            if rcvd is not None:
                c.check(
                    (rcvd.code, rcvd.reason) == (4001, "adiós ✓"),
                    f"server-close: got close {rcvd.code} {rcvd.reason!r}, expected 4001 'adiós ✓'",
                )
        except asyncio.TimeoutError:
            c.check(False, "server-close: the server did not close within the timeout")
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)


def concurrent_messages(i):
    return [f"conn {i} msg 0 ✓", pattern(1000 + i), f"conn {i} msg 2"]


async def scenario_concurrent(url, args, c):
    """args.connections connections at once, offering no subprotocol; each echoes its 3 messages
    (concurrent_messages) and closes with 1000. All connections are open at the same time."""
    n = args.connections
    opened = 0
    all_open = asyncio.Event()

    async def one(i):
        nonlocal opened
        async with connect(url, **client_opts()) as ws:
            c.check(ws.subprotocol is None, f"conn {i}: unexpected subprotocol {ws.subprotocol!r}")
            opened += 1
            if opened == n:
                all_open.set()
            await asyncio.wait_for(all_open.wait(), TIMEOUT)
            for m in concurrent_messages(i):
                await ws.send(m)
                await expect_echo(ws, m, c, f"conn {i}")
            await close_and_check(ws, 1000, "", c, f"conn {i}")

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            c.check(False, f"conn {i}: {r!r}")


SCENARIOS = {
    "echo": scenario_echo,
    "frag": scenario_frag,
    "server-close": scenario_server_close,
    "concurrent": scenario_concurrent,
}


async def run_client(args):
    c = Checker()
    try:
        await asyncio.wait_for(SCENARIOS[args.scenario](args.url, args, c), 60)
    except Exception as e:  # any exception is a failed check, reported with its type
        c.check(False, f"{args.scenario}: {e!r}")
    if c.failures:
        print(f"{len(c.failures)} check(s) failed", flush=True)
        return 1
    print("OK", flush=True)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--protocols", default="")
    cl = sub.add_parser("client")
    cl.add_argument("url")
    cl.add_argument("scenario", choices=sorted(SCENARIOS))
    cl.add_argument("--protocols", default="")
    cl.add_argument("--expect-protocol", default="-")
    cl.add_argument("--connections", type=int, default=100)
    args = p.parse_args()
    if args.mode == "server":
        exit_when_stdin_closes()
        asyncio.run(run_server(args.protocols))
    else:
        sys.exit(asyncio.run(run_client(args)))


if __name__ == "__main__":
    main()
