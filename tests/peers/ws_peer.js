#!/usr/bin/env node
// A WebSocket peer built on Node's `ws` library, for wsloop's interoperability tests.
//
// Run by tests/interop_node.rs after scripts/install-peers.sh installed tests/peers/node_modules.
// tests/peers/ws_peer.py is the same program for Python's `websockets`; keep the two in step (and
// the script constants in tests/interop_support/mod.rs).
//
// SERVER MODE (their server <- our client)
//
//     node ws_peer.js server [--protocols p1,p2]
//
// Binds 127.0.0.1 port 0 and prints `PORT <n>`, then one line per event:
//
//     OPEN <path> <subprotocol or ->   a connection was accepted
//     PING <hex>                       a ping arrived (ws answers it by itself)
//     PONG <hex>                       a pong arrived
//     CLOSED <code> <hex reason>       the close frame it received (`CLOSED 1006 -` if none)
//
// Subprotocols: it picks the first protocol the client offers that is in --protocols (client
// preference order), or none. Each connection echoes every message unchanged, except that
//   - on path /frag, each message is echoed split into 3 frames at byte offsets n/3 and 2n/3
//     (`send(data, {fin: false})` twice, then `{fin: true}`; text is split as raw UTF-8, possibly
//     inside a character): frames [a, b, c];
//   - the text `cmd:ping <payload>` makes it send a ping with that payload;
//   - the text `cmd:close <code> <reason>` makes it close with that code and reason.
// It exits when its stdin closes (so it never outlives the test that started it).
//
// CLIENT MODE (their client -> our server)
//
//     node ws_peer.js client <url> <scenario> [--protocols a,b] [--expect-protocol p|-] [--connections n]
//
// Scenarios (see each function): echo, frag, server-close, concurrent. Exits 0 only if every check
// passed; prints `FAIL: ...` for each failed check otherwise.
'use strict';

const { WebSocket, WebSocketServer } = require('ws');

const UTF8 = 'héllo wörld — 日本語 — 🦀🎉 — ∑≠∞';
const BINARY_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20, 16 << 20];
// Text split inside multi-byte characters: cut 1 byte into the 3-byte "✓" and 2 bytes into "🦀".
const FRAG_TEXT = 'fragmented ✓ 日本語 🦀!';
const TIMEOUT_MS = 20000;

/** n deterministic bytes: byte k is (7k + n) mod 251 (the same in every peer and in Rust). */
function pattern(n) {
  const b = Buffer.allocUnsafe(n);
  for (let k = 0; k < n; k++) b[k] = (k * 7 + n) % 251;
  return b;
}

/** The echo scenario's messages, in order (mirrored by interop_support::script_messages). */
function script() {
  const msgs = ['hello', '', UTF8, UTF8.repeat(3000)];
  for (const n of BINARY_SIZES) msgs.push(pattern(n));
  return msgs;
}

function fragTextChunks() {
  const b = Buffer.from(FRAG_TEXT);
  const i = b.indexOf(Buffer.from('✓')) + 1;
  const j = b.indexOf(Buffer.from('🦀')) + 2;
  return [b.subarray(0, i), b.subarray(i, j), b.subarray(j)];
}

function hex(b) {
  return b && b.length ? Buffer.from(b).toString('hex') : '-';
}

function describe(m) {
  if (typeof m === 'string') return `text(${Buffer.byteLength(m)} B: ${JSON.stringify(m.slice(0, 40))})`;
  return `binary(${m.length} B: ${m.subarray(0, 16).toString('hex')}...)`;
}

function parseArgs(argv) {
  const opts = { protocols: '', expectProtocol: '-', connections: 100, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--protocols') opts.protocols = argv[++i];
    else if (a === '--expect-protocol') opts.expectProtocol = argv[++i];
    else if (a === '--connections') opts.connections = Number(argv[++i]);
    else opts.positional.push(a);
  }
  return opts;
}

// ---------------------------------------------------------------- server

function runServer(opts) {
  const supported = opts.protocols.split(',').filter((p) => p);
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    maxPayload: 64 << 20,
    handleProtocols: (offered) => {
      for (const p of offered) if (supported.includes(p)) return p;
      return false;
    },
  });
  wss.on('listening', () => console.log(`PORT ${wss.address().port}`));
  wss.on('connection', (ws, req) => {
    const path = req.url;
    console.log(`OPEN ${path} ${ws.protocol || '-'}`);
    const frag = path.startsWith('/frag');
    ws.on('ping', (data) => console.log(`PING ${hex(data)}`));
    ws.on('pong', (data) => console.log(`PONG ${hex(data)}`));
    ws.on('close', (code, reason) => console.log(`CLOSED ${code} ${hex(reason)}`));
    ws.on('error', (e) => console.error(`connection error: ${e}`));
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? null : data.toString('utf8');
      if (text !== null && text.startsWith('cmd:ping ')) {
        ws.ping(Buffer.from(text.slice('cmd:ping '.length)));
      } else if (text !== null && text.startsWith('cmd:close ')) {
        const rest = text.slice('cmd:close '.length);
        const sp = rest.indexOf(' ');
        ws.close(Number(rest.slice(0, sp)), rest.slice(sp + 1));
      } else if (frag) {
        const n = data.length;
        const cuts = [0, Math.floor(n / 3), Math.floor((2 * n) / 3), n];
        for (let k = 0; k < 3; k++) {
          ws.send(data.subarray(cuts[k], cuts[k + 1]), { binary: isBinary, fin: k === 2 });
        }
      } else {
        ws.send(data, { binary: isBinary });
      }
    });
  });
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

// ---------------------------------------------------------------- client

/** A connection with a queue of events, so a scenario can await them in order. */
class Conn {
  constructor(url, protocols) {
    this.ws = new WebSocket(url, protocols, { maxPayload: 64 << 20 });
    this.queue = [];
    this.waiters = [];
    this.pings = [];
    this.pongs = [];
    this.closed = null;
    this.ws.on('message', (data, isBinary) => {
      this.push({ type: 'message', data: isBinary ? data : data.toString('utf8') });
    });
    this.ws.on('ping', (data) => this.pings.push(Buffer.from(data)));
    this.ws.on('pong', (data) => this.pongs.push(Buffer.from(data)));
    this.ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString('utf8'), clean: code !== 1006 };
      this.push({ type: 'close', ...this.closed });
    });
    this.ws.on('error', (e) => this.push({ type: 'error', error: String(e) }));
  }

  push(ev) {
    const w = this.waiters.shift();
    if (w) w(ev);
    else this.queue.push(ev);
  }

  next(label) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve({ type: 'timeout', label });
      }, TIMEOUT_MS);
      const done = (ev) => {
        clearTimeout(timer);
        resolve(ev);
      };
      this.waiters.push(done);
    });
  }

  open() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('open timed out')), TIMEOUT_MS);
      this.ws.once('open', () => {
        clearTimeout(timer);
        resolve();
      });
      this.ws.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      this.ws.once('unexpected-response', (_req, res) => {
        clearTimeout(timer);
        reject(new Error(`unexpected HTTP ${res.statusCode}`));
      });
    });
  }

  async waitFor(pred, label) {
    const deadline = Date.now() + TIMEOUT_MS;
    while (!pred()) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 5));
    }
    return true;
  }
}

class Checker {
  constructor() {
    this.failures = [];
  }

  check(ok, what) {
    if (!ok) {
      this.failures.push(what);
      console.log(`FAIL: ${what}`);
    }
    return ok;
  }
}

function same(got, sent) {
  if (typeof sent === 'string') return typeof got === 'string' && got === sent;
  return Buffer.isBuffer(got) && Buffer.compare(got, sent) === 0;
}

async function expectEcho(conn, sent, c, label) {
  const ev = await conn.next(label);
  if (ev.type !== 'message') {
    return c.check(false, `${label}: no echo of ${describe(sent)}: ${JSON.stringify(ev)}`);
  }
  return c.check(same(ev.data, sent), `${label}: sent ${describe(sent)}, echo was ${describe(ev.data)}`);
}

async function expectPong(conn, payload, c, label) {
  const ok = await conn.waitFor(() => conn.pongs.some((p) => Buffer.compare(p, payload) === 0));
  c.check(ok, `${label}: no pong with payload ${hex(payload)} (pongs: ${conn.pongs.map(hex).join(',')})`);
}

async function closeAndCheck(conn, code, reason, c, label) {
  conn.ws.close(code, reason);
  const ev = await conn.next(label);
  c.check(ev.type === 'close', `${label}: expected the closing handshake to finish, got ${JSON.stringify(ev)}`);
  if (ev.type === 'close') {
    c.check(ev.clean, `${label}: no close frame came back after close(${code}, ${JSON.stringify(reason)})`);
    c.check(ev.code === code, `${label}: sent close code ${code}, the answer had ${ev.code}`);
  }
}

/**
 * Texts (multi-byte UTF-8, 0 B, >64 KiB) and binaries 0 B..16 MiB, each echoed byte-exact; our
 * ping answered with its payload; `cmd:ping srv-ping` makes the server ping us (the 'ping' event
 * must carry the payload); close 4000 "bye", whose code must come back.
 */
async function scenarioEcho(url, opts, c) {
  const protocols = opts.protocols.split(',').filter((p) => p);
  const conn = new Conn(url, protocols);
  await conn.open();
  const want = opts.expectProtocol === '-' ? '' : opts.expectProtocol;
  c.check(
    conn.ws.protocol === want,
    `echo: negotiated subprotocol ${JSON.stringify(conn.ws.protocol)}, expected ${JSON.stringify(want)}`,
  );
  for (const m of script()) {
    conn.ws.send(m);
    await expectEcho(conn, m, c, 'echo');
  }
  const payload = Buffer.from('node-ping\x00\xff', 'latin1');
  conn.ws.ping(payload);
  await expectPong(conn, payload, c, 'echo');
  conn.ws.send('cmd:ping srv-ping');
  const got = await conn.waitFor(() => conn.pings.length > 0);
  c.check(
    got && conn.pings.length === 1 && conn.pings[0].toString('latin1') === 'srv-ping',
    `echo: server pings ${conn.pings.map(hex).join(',')}, expected exactly srv-ping`,
  );
  conn.ws.send('after ping');
  await expectEcho(conn, 'after ping', c, 'echo');
  await closeAndCheck(conn, 4000, 'bye', c, 'echo');
}

/**
 * Fragmented messages with `send(data, {fin: false})`: text split inside UTF-8 characters, binary
 * with an empty middle fragment, and 1 MiB in 16 fragments with a ping between fragments 8 and 9.
 * Each echo must be the whole message.
 */
async function scenarioFrag(url, opts, c) {
  const conn = new Conn(url, []);
  await conn.open();
  const t = fragTextChunks();
  t.forEach((chunk, k) => conn.ws.send(chunk, { binary: false, fin: k === t.length - 1 }));
  await expectEcho(conn, FRAG_TEXT, c, 'frag text');

  const b = [Buffer.from([0, 1, 2]), Buffer.alloc(0), pattern(70000)];
  b.forEach((chunk, k) => conn.ws.send(chunk, { binary: true, fin: k === b.length - 1 }));
  await expectEcho(conn, Buffer.concat(b), c, 'frag binary');

  const big = pattern(1 << 20);
  for (let k = 0; k < 16; k++) {
    conn.ws.send(big.subarray(k * 65536, (k + 1) * 65536), { binary: true, fin: k === 15 });
    if (k === 7) conn.ws.ping(Buffer.from('mid-frag'));
  }
  await expectEcho(conn, big, c, 'frag 1 MiB');
  await expectPong(conn, Buffer.from('mid-frag'), c, 'frag 1 MiB');
  await closeAndCheck(conn, 1000, '', c, 'frag');
}

/** Ask our server to close with 4001 and a UTF-8 reason; the close must arrive exactly. */
async function scenarioServerClose(url, opts, c) {
  const conn = new Conn(url, []);
  await conn.open();
  conn.ws.send('cmd:close 4001 adiós ✓');
  const ev = await conn.next('server-close');
  const what = `expected the server to close, got ${JSON.stringify(ev).slice(0, 200)}`;
  if (c.check(ev.type === 'close', `server-close: ${what}`)) {
    c.check(ev.clean, 'server-close: connection ended without a close frame');
    c.check(
      ev.code === 4001 && ev.reason === 'adiós ✓',
      `server-close: got close ${ev.code} ${JSON.stringify(ev.reason)}, expected 4001 "adiós ✓"`,
    );
  }
}

function concurrentMessages(i) {
  return [`conn ${i} msg 0 ✓`, pattern(1000 + i), `conn ${i} msg 2`];
}

/**
 * opts.connections connections at once, offering no subprotocol; each echoes its 3 messages
 * (concurrentMessages) and closes with 1000. All connections are open at the same time.
 */
async function scenarioConcurrent(url, opts, c) {
  const n = opts.connections;
  const conns = [];
  for (let i = 0; i < n; i++) conns.push(new Conn(url, []));
  const opened = await Promise.allSettled(conns.map((x) => x.open()));
  opened.forEach((r, i) => c.check(r.status === 'fulfilled', `conn ${i}: open failed: ${r.reason}`));
  if (c.failures.length) return;
  await Promise.all(
    conns.map(async (conn, i) => {
      c.check(conn.ws.protocol === '', `conn ${i}: unexpected subprotocol ${conn.ws.protocol}`);
      for (const m of concurrentMessages(i)) {
        conn.ws.send(m);
        await expectEcho(conn, m, c, `conn ${i}`);
      }
      await closeAndCheck(conn, 1000, '', c, `conn ${i}`);
    }),
  );
}

const SCENARIOS = {
  echo: scenarioEcho,
  frag: scenarioFrag,
  'server-close': scenarioServerClose,
  concurrent: scenarioConcurrent,
};

async function runClient(opts) {
  const [url, scenario] = opts.positional;
  const c = new Checker();
  const f = SCENARIOS[scenario];
  if (!url || !f) {
    console.log(`FAIL: usage: ws_peer.js client <url> <${Object.keys(SCENARIOS).join('|')}>`);
    return 2;
  }
  const overall = setTimeout(() => {
    console.log(`FAIL: ${scenario}: did not finish within 60 s`);
    process.exit(1);
  }, 60000);
  try {
    await f(url, opts, c);
  } catch (e) {
    c.check(false, `${scenario}: ${e && e.stack ? e.stack : e}`);
  }
  clearTimeout(overall);
  if (c.failures.length) {
    console.log(`${c.failures.length} check(s) failed`);
    return 1;
  }
  console.log('OK');
  return 0;
}

function main() {
  const [mode, ...rest] = process.argv.slice(2);
  const opts = parseArgs(rest);
  if (mode === 'server') {
    runServer(opts);
  } else if (mode === 'client') {
    runClient(opts).then((code) => process.exit(code));
  } else {
    console.error('usage: ws_peer.js server [--protocols p1,p2] | client <url> <scenario> [options]');
    process.exit(2);
  }
}

main();
