/**
 * An upstream that speaks broken HTTP on purpose: a plain TCP server whose
 * behaviour, once a request head has arrived, is written byte by byte by the
 * test (or taken from `brokenHttp`). It records the raw bytes of every
 * connection, so a test can assert what legate sent, and counts connections,
 * so it can assert that legate sent nothing at all.
 */
import { once } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Socket } from 'node:net';
import { listenOnLoopback } from './upstream.js';

/** What the upstream does once a request head (up to the blank line) arrived on a connection. */
export type RawBehaviour = (socket: Socket, head: string) => void;

export interface RawUpstream {
  readonly port: number;
  readonly url: string;
  /** Every byte received, one string (latin1) per connection, in accept order. */
  readonly received: string[];
  /** Connections accepted so far. */
  accepted(): number;
  /** Connections currently open (server side). */
  open(): number;
  close(): Promise<void>;
}

/**
 * Starts the server. `behaviour` runs once per connection, at the first
 * request head; `undefined` accepts connections and never answers (a stalled
 * peer, e.g. one that never completes a TLS handshake). `record: false` keeps
 * no bytes (`received` stays empty), for tests that measure memory.
 */
export async function startRawUpstream(behaviour: RawBehaviour | undefined, opts: { record?: boolean } = {}): Promise<RawUpstream> {
  const record = opts.record !== false;
  const received: string[] = [];
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted++;
    sockets.add(socket);
    const index = record ? received.push('') - 1 : -1;
    let head = '';
    let answered = false;
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    // Always read, so that a peer's FIN is seen and the socket closes (an unread socket would stay half-open).
    socket.on('data', (chunk: Buffer) => {
      if (index !== -1) received[index] += chunk.toString('latin1');
      if (answered || behaviour === undefined) return;
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end !== -1) {
        answered = true;
        behaviour(socket, head.slice(0, end));
        head = '';
      }
    });
  });
  const port = await listenOnLoopback(server);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    received,
    accepted: () => accepted,
    open: () => sockets.size,
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
      if (server.listening) await once(server, 'close');
    },
  };
}

/** Writes `bytes`, then resets the connection (RST, not FIN) once they are on the wire. */
function writeThenReset(socket: Socket, bytes: string): void {
  socket.write(bytes, () => setTimeout(() => socket.resetAndDestroy(), 20));
}

/** The broken upstreams the fault tests use, each one way an upstream fails in production. */
export const brokenHttp = {
  /** Drops the connection before any response byte. */
  resetBeforeHead: ((socket) => socket.resetAndDestroy()) satisfies RawBehaviour,
  /** A 200 with `Content-Length: 100000`, 7 bytes of body, then a reset. */
  resetMidBodyLength: ((socket) =>
    writeThenReset(socket, 'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\npartial')) satisfies RawBehaviour,
  /** A chunked 200, one chunk, then a reset (no terminating zero-length chunk). */
  resetMidBodyChunked: ((socket) =>
    writeThenReset(socket, 'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n7\r\npartial\r\n')) satisfies RawBehaviour,
  /** A 200 head and part of its body, then silence forever. */
  neverEnds: ((socket) => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial')) satisfies RawBehaviour,
  /** Not HTTP at all. */
  garbage: ((socket) => socket.end('\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n')) satisfies RawBehaviour,
  /** A banner of another protocol, and the connection left open. */
  otherProtocol: ((socket) => socket.write('SSH-2.0-OpenSSH_9.6\r\n')) satisfies RawBehaviour,
  /** 64 KiB of response headers (Node's client allows 16 KiB). */
  oversizedHeaders: ((socket) =>
    socket.end(`HTTP/1.1 200 OK\r\nx-filler: ${'a'.repeat(64 * 1024)}\r\ncontent-length: 2\r\n\r\nok`)) satisfies RawBehaviour,
  /** An upgrade nobody asked for: Node's client hands no response over for it. */
  unaskedSwitchingProtocols: ((socket) =>
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n')) satisfies RawBehaviour,
  /** A reason phrase with a DEL byte: Node parses it, but refuses to write it again. */
  invalidReasonPhrase: ((socket) => socket.end('HTTP/1.1 200 O\x7fK\r\ncontent-length: 2\r\n\r\nok')) satisfies RawBehaviour,
  /** Both framings at once: the response-side smuggling shape. */
  lengthAndChunked: ((socket) =>
    socket.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n')) satisfies RawBehaviour,
} as const;

// ---------------------------------------------------------------------------
// The app's side, byte by byte: what legate answered and how the connection ended.

/** One HTTP/1.1 response as read off the wire. */
export interface WireResponse {
  readonly status: number;
  /** Header names lower-cased, every value kept. */
  readonly headers: ReadonlyMap<string, readonly string[]>;
  readonly body: Buffer;
  /** How the body was delimited. */
  readonly framing: 'content-length' | 'chunked' | 'none' | 'close';
  /** False when the bytes ended before the framing said the body does (a cut response). */
  readonly complete: boolean;
}

/** The first value of header `name`. */
export function header(r: WireResponse, name: string): string | undefined {
  return r.headers.get(name)?.[0];
}

const STATUS_LINE = /^HTTP\/1\.1 ([1-9]\d\d) [\t\x20-\x7e\x80-\xff]*$/;
const HEADER_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[\t ]*([\t\x20-\x7e\x80-\xff]*?)[\t ]*$/;

/**
 * Parses every response in `bytes` strictly (RFC 9112): a status line, header
 * lines, a blank line, and a body framed by exactly one of Content-Length or
 * chunked. Throws on anything malformed; a last response whose body the
 * bytes do not finish is returned with `complete: false`.
 */
export function parseResponses(bytes: Buffer, opts: { head?: boolean } = {}): WireResponse[] {
  const out: WireResponse[] = [];
  let at = 0;
  while (at < bytes.length) {
    const end = bytes.indexOf('\r\n\r\n', at, 'latin1');
    if (end === -1) throw new Error(`response head not terminated: ${JSON.stringify(bytes.subarray(at, at + 200).toString('latin1'))}`);
    const lines = bytes.subarray(at, end).toString('latin1').split('\r\n');
    const statusMatch = STATUS_LINE.exec(lines[0] ?? '');
    if (statusMatch === null) throw new Error(`bad status line ${JSON.stringify(lines[0])}`);
    const status = Number(statusMatch[1]);
    const headers = new Map<string, string[]>();
    for (const line of lines.slice(1)) {
      const m = HEADER_LINE.exec(line);
      if (m === null) throw new Error(`bad header line ${JSON.stringify(line)}`);
      const name = (m[1] as string).toLowerCase();
      headers.set(name, [...(headers.get(name) ?? []), m[2] as string]);
    }
    at = end + 4;
    const lengths = headers.get('content-length');
    const chunked = headers.get('transfer-encoding')?.join(',').toLowerCase().trim().endsWith('chunked') === true;
    if (lengths !== undefined && chunked) throw new Error('response has both Content-Length and chunked Transfer-Encoding');
    if (lengths !== undefined && (lengths.length !== 1 || !/^\d+$/.test(lengths[0] as string))) {
      throw new Error(`bad Content-Length ${JSON.stringify(lengths)}`);
    }
    const bodyless = opts.head === true || status < 200 || status === 204 || status === 304;
    if (bodyless) {
      out.push({ status, headers, body: Buffer.alloc(0), framing: 'none', complete: true });
      continue;
    }
    if (lengths !== undefined) {
      const length = Number(lengths[0]);
      const body = bytes.subarray(at, Math.min(bytes.length, at + length));
      at += body.length;
      out.push({ status, headers, body, framing: 'content-length', complete: body.length === length });
      continue;
    }
    if (chunked) {
      const parts: Buffer[] = [];
      let complete = false;
      for (;;) {
        const lineEnd = bytes.indexOf('\r\n', at, 'latin1');
        if (lineEnd === -1) break;
        const sizeText = bytes.subarray(at, lineEnd).toString('latin1').split(';')[0]?.trim() ?? '';
        if (!/^[0-9a-fA-F]{1,8}$/.test(sizeText)) throw new Error(`bad chunk size ${JSON.stringify(sizeText)}`);
        const size = parseInt(sizeText, 16);
        if (size === 0) {
          const trailerEnd = bytes.indexOf('\r\n', lineEnd + 2, 'latin1');
          // Only an empty trailer section is expected from legate.
          if (trailerEnd === lineEnd + 2) {
            at = trailerEnd + 2;
            complete = true;
          } else at = bytes.length;
          break;
        }
        if (lineEnd + 2 + size + 2 > bytes.length) {
          parts.push(bytes.subarray(lineEnd + 2, Math.min(bytes.length, lineEnd + 2 + size)));
          at = bytes.length;
          break;
        }
        if (bytes.toString('latin1', lineEnd + 2 + size, lineEnd + 4 + size) !== '\r\n') throw new Error('chunk not followed by CRLF');
        parts.push(bytes.subarray(lineEnd + 2, lineEnd + 2 + size));
        at = lineEnd + 4 + size;
      }
      if (!complete) at = bytes.length;
      out.push({ status, headers, body: Buffer.concat(parts), framing: 'chunked', complete });
      continue;
    }
    // Neither: the body runs to the close of the connection (legate never does this, but it is valid HTTP).
    out.push({ status, headers, body: bytes.subarray(at), framing: 'close', complete: true });
    at = bytes.length;
  }
  return out;
}

/** What happened on one raw connection to legate. */
export interface WireExchange {
  readonly bytes: Buffer;
  /** True when legate closed (FIN or reset) before `timeoutMs`; false when the test gave up waiting. */
  readonly closedByPeer: boolean;
  /** The socket error, e.g. ECONNRESET, when the connection was reset. */
  readonly error: string | undefined;
  /** ms from connect to the close (or to giving up). */
  readonly ms: number;
  /** ms from connect to the first byte received, if any. */
  readonly firstByteMs: number | undefined;
}

export interface WireOptions {
  /** Sent at connect; then each of `trickle` after `everyMs`. */
  readonly trickle?: readonly (string | Buffer)[];
  readonly everyMs?: number;
  /** Give up (and destroy the socket) after this long. */
  readonly timeoutMs?: number;
  /** Stop as soon as this many complete responses arrived (for keep-alive connections legate keeps open). */
  readonly responses?: number;
  readonly head?: boolean;
}

/** Sends raw bytes to `port` and collects everything until legate closes, `responses` arrived, or `timeoutMs`. */
export function wire(port: number, bytes: string | Buffer, opts: WireOptions = {}): Promise<WireExchange> {
  const started = performance.now();
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let firstByteMs: number | undefined;
    let error: string | undefined;
    let closedByPeer = false;
    let settled = false;
    const timers: NodeJS.Timeout[] = [];
    const finish = (): void => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      socket.destroy();
      resolve({ bytes: Buffer.concat(chunks), closedByPeer, error, ms: performance.now() - started, firstByteMs });
    };
    timers.push(setTimeout(finish, opts.timeoutMs ?? 5_000));
    socket.on('data', (c: Buffer) => {
      firstByteMs ??= performance.now() - started;
      chunks.push(c);
      if (opts.responses !== undefined) {
        try {
          const got = parseResponses(Buffer.concat(chunks), opts.head === true ? { head: true } : {});
          if (got.length >= opts.responses && got.every((r) => r.complete && r.framing !== 'close')) finish();
        } catch {
          // Not parseable yet (or at all): keep reading; the test parses the final bytes itself.
        }
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
      closedByPeer = true;
      finish();
    });
    socket.on('end', () => {
      closedByPeer = true;
      finish();
    });
    socket.write(bytes);
    (opts.trickle ?? []).forEach((part, i) => {
      timers.push(
        setTimeout(() => {
          if (!socket.destroyed) socket.write(part);
        }, (opts.everyMs ?? 100) * (i + 1)),
      );
    });
  });
}
