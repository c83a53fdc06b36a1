/**
 * The HTTP/1.1 listener the app talks to. It turns each request into a
 * RequestContext, runs the route's chain and hands the outcome to respond.ts;
 * requests it cannot route are answered here without contacting anything.
 *
 * It is also the first line against a hostile or broken app: Node's strict
 * parser refuses malformed and ambiguous messages (smuggling shapes), and this
 * file bounds what the parser does not — header count, duplicate Host, an app
 * that goes silent in its headers or body, connections beyond the limit,
 * requests that name the admin port — answering each with a status and never
 * contacting an upstream for it.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { DropArgument, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { HostPort, ServerLimits } from '../config/model.js';
import { LegateError, toLegateError } from '../errors.js';
import { CountingIncomingMessage, CountingServerResponse, responseBodyBytes } from '../observability/access-log.js';
import { RequestContext } from '../proxy/context.js';
import { appRequestId, upstreamRequestHeaders } from '../proxy/headers.js';
import { AppRequestError, sendError, sendUpstreamResponse } from '../proxy/respond.js';
import { findRoute } from '../routing/router.js';
import { parseTarget, type RequestTarget } from '../routing/target.js';
import type { Generation } from '../runtime/generation.js';

/**
 * Envoy's default `max_headers_count`. Node's own cap (2,000) drops the excess
 * silently, so a request would be routed on some of its headers; past this one
 * it gets 431 instead.
 */
export const MAX_REQUEST_HEADERS = 100;

/** How long a connection legate answered and is closing may stay open for the app to read the answer. */
const LINGER_MS = 2_000;

/** Dropped connections are reported at most this often, with the count since the last report. */
const DROP_REPORT_MS = 1_000;

/** What the listener needs from the app. */
export interface ProxyListenerHost {
  /** The generation new requests run on. */
  current(): Generation;
  draining(): boolean;
  /** Called once per request after the response ended or failed (logs, metrics). */
  onComplete(ctx: RequestContext | EarlyOutcome): void;
  onClientError?(err: Error, socket: Socket): void;
  /** The admin listener's bound `host:port` (the config may say port 0), so requests naming it are refused. */
  adminAddress?(): string | undefined;
  /**
   * Connections closed at accept because `limits.maxConnections` were open:
   * called at the first drop, then at most once a second with the count since the last call.
   */
  onConnectionsDropped?(dropped: number, maxConnections: number, last: DropArgument | undefined): void;
}

/** A request answered before any route took it (no route, bad target, draining). */
export interface EarlyOutcome {
  readonly early: true;
  readonly id: string;
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly errorCode: string;
  readonly startedAt: number;
  /** Body bytes of the answer, as for a routed request. */
  readonly bytesOut: number | null;
}

const LOOPBACK = /^(127\.|::1$|::ffff:127\.)/;

export function isLoopback(address: string | undefined): boolean {
  return address !== undefined && LOOPBACK.test(address);
}

const LOOPBACK_NAMES = new Set(['localhost', '[::1]', '::1', '0.0.0.0', '[::]']);

/** The admin listener's address: the bound one when the app knows it, else the configured one unless it is port 0. */
function adminHostPort(bound: string | undefined, configured: HostPort): { host: string; port: number } | undefined {
  if (bound !== undefined) {
    const cut = bound.lastIndexOf(':');
    return { host: bound.slice(0, cut).toLowerCase(), port: Number(bound.slice(cut + 1)) };
  }
  return configured.port === 0 ? undefined : { host: configured.host.toLowerCase(), port: configured.port };
}

/**
 * True when the request's authority (absolute URL or Host) is legate's own
 * admin listener: its port on a loopback name or on the admin's own host.
 */
function namesAdmin(target: RequestTarget, admin: { host: string; port: number } | undefined): boolean {
  if (admin === undefined || target.authority === '') return false;
  const portText = target.authority.slice(target.hostname.length + 1);
  if ((portText === '' ? 80 : Number(portText)) !== admin.port) return false;
  const host = target.hostname;
  const bare = admin.host.replace(/^\[|\]$/g, '');
  return LOOPBACK_NAMES.has(host) || host.startsWith('127.') || host === admin.host || host === `[${bare}]` || bare === '0.0.0.0' || bare === '::';
}

/**
 * The interval at which Node checks headersTimeout/requestTimeout; its default (30 s) would let a 10 s
 * limit run three times over. Fixed when the listener is made: at most 1 s even with both timeouts off,
 * so that a reload that turns one on is enforced as promptly (a check with both off returns at once).
 */
function checkingIntervalMs(limits: ServerLimits): number {
  const timeouts = [limits.headersTimeoutMs, limits.requestTimeoutMs].filter((t) => t > 0);
  if (timeouts.length === 0) return 1_000;
  return Math.max(50, Math.min(1_000, Math.floor(Math.min(...timeouts) / 4)));
}

/**
 * Applies `limits` to a listener made by createProxyListener (a reload): maxConnections and maxHeaderSize
 * from the next connection accepted, headersTimeout and requestTimeout from Node's next check of the
 * connections open. The checking interval stays the one set when the listener was made.
 */
export function applyServerLimits(server: Server, limits: ServerLimits): void {
  server.maxConnections = limits.maxConnections;
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = limits.requestTimeoutMs;
  // An own property Node reads when it sets up each new connection's parser (lib/_http_server.js).
  (server as Server & { maxHeaderSize: number }).maxHeaderSize = limits.maxHeaderSizeBytes;
}

/** After legate's last answer on a connection, the app has LINGER_MS to read it and close; then the socket goes. */
function closeAfterAnswer(socket: Socket): void {
  // HTTP servers allow half-open sockets: after our end(), one the app never closes would stay forever.
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** Header-field count and duplicate Host (RFC 9112 §3.2: a server MUST answer 400): the shapes Node's parser lets through. */
function headerShapeError(raw: readonly string[]): AppRequestError | undefined {
  if (raw.length / 2 > MAX_REQUEST_HEADERS) {
    return new AppRequestError(431, `more than ${MAX_REQUEST_HEADERS} header fields`);
  }
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
  }
  return hosts > 1 ? new AppRequestError(400, 'more than one Host header') : undefined;
}

/**
 * True while the app's request body is unfinished and nothing of it waits to be
 * sent: a silence on the upstream connection then is the app's, not the
 * upstream's (which is waiting for the rest of the body, as servers do).
 */
export function appBodyStalled(raw: IncomingMessage): boolean {
  return !raw.complete && raw.readableLength === 0;
}

/**
 * Cuts an app that goes silent mid-body for the route's `idleTimeout`
 * ("longest silence while a body streams either way"). Progress is the
 * socket's byte count; body data nobody has read yet also counts, since then
 * legate (or the upstream, through backpressure) is the slow side. This is
 * the only judge of the app's pace: undici's head timer does not run while a
 * try is still sending the body.
 * Returns the function that stops watching.
 */
function watchAppBody(ctx: RequestContext): (() => void) | undefined {
  const raw = ctx.raw;
  const idle = ctx.route.settings.idleTimeoutMs;
  if (idle <= 0 || raw.complete) return undefined;
  const socket = raw.socket;
  let seen = socket.bytesRead;
  let quietSince = performance.now();
  const timer = setInterval(
    () => {
      if (raw.complete || ctx.signal.aborted) {
        clearInterval(timer);
        return;
      }
      const now = performance.now();
      if (socket.bytesRead !== seen || !appBodyStalled(raw)) {
        seen = socket.bytesRead;
        quietSince = now;
      } else if (now - quietSince >= idle) {
        clearInterval(timer);
        ctx.abort(new AppRequestError(408, `the app sent nothing of its request body for ${idle} ms (idleTimeout of route ${ctx.route.name})`));
      }
    },
    Math.max(25, Math.min(1_000, Math.floor(idle / 4))),
  );
  return () => clearInterval(timer);
}

function pathForLog(url: string | undefined): string {
  const u = url ?? '';
  const q = u.indexOf('?');
  return (q === -1 ? u : u.slice(0, q)).slice(0, 200);
}

/**
 * Which routes a proxy listener serves: `MAIN_LISTENER`, or the `listen`
 * text of the route that owns its port. Read per request, because a reload
 * may hand a bound socket to another role (the main listener moving onto a
 * port a route listener gives up, or the reverse).
 */
export interface ListenerRole {
  key: string;
}

export function createProxyListener(host: ProxyListenerHost, role: ListenerRole, limits: ServerLimits): Server {
  const answerEarly = (req: IncomingMessage, res: ServerResponse, err: LegateError, startedAt: number): void => {
    const id = appRequestId(req.headers['x-request-id']) ?? randomUUID();
    res.setHeader('x-request-id', id);
    sendError(undefined, res, err, req);
    host.onComplete({
      early: true,
      id,
      method: req.method ?? '',
      path: pathForLog(req.url),
      status: err.status,
      errorCode: err.code,
      startedAt,
      bytesOut: responseBodyBytes(req.method ?? '', res),
    });
  };

  /** The request whose head was parsed last on each socket: a parse error after it belongs to its body. */
  const parsing = new WeakMap<Socket, RequestContext>();

  const run = async (ctx: RequestContext, generation: Generation): Promise<void> => {
    const stopWatching = watchAppBody(ctx);
    try {
      // The parser's verdict on the rest of the message came first (see onRequest).
      if (ctx.signal.aborted) throw ctx.signal.reason;
      const upstream = await ctx.route.handler(ctx);
      await sendUpstreamResponse(ctx, upstream);
    } catch (e) {
      try {
        sendError(ctx, ctx.appResponse, toLegateError(e), ctx.raw);
      } catch {
        // Only a bug gets here (the answer itself could not be written). It costs this request its
        // connection, never the process: `run` is not awaited, so a rejection would be unhandled.
        ctx.errorCode = 'internal-error';
        ctx.appResponse.destroy();
      }
    } finally {
      stopWatching?.();
      if (parsing.get(ctx.raw.socket) === ctx) parsing.delete(ctx.raw.socket);
      ctx.finish();
      generation.leave();
      host.onComplete(ctx);
    }
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const startedAt = performance.now();
    if (host.draining()) {
      res.setHeader('connection', 'close');
      answerEarly(req, res, new LegateError('draining', 'legate is shutting down'), startedAt);
      return;
    }
    const generation = host.current();
    let ctx: RequestContext;
    try {
      const shape = headerShapeError(req.rawHeaders);
      if (shape !== undefined) throw shape;
      const target = parseTarget(req.url ?? '/', req.headers.host);
      const listenerKey = role.key;
      const routes = generation.tables.get(listenerKey) ?? [];
      const method = req.method ?? 'GET';
      // A route with its own listener owns the whole port: it takes every request there.
      const route = listenerKey === 'main' ? findRoute(routes, method, target, req.headers) : routes[0];
      if (route === undefined) throw new LegateError('no-route', `no route serves ${listenerKey}`);
      const s = route.settings;
      // The admin port is never reached through the proxy port, whatever Host or URL the app sends, unless a
      // route names that very authority.
      if (s.match.host !== target.authority && namesAdmin(target, adminHostPort(host.adminAddress?.(), generation.config.admin))) {
        throw new LegateError('no-route', `no route matches ${method} ${target.authority}: legate's admin listener is not reachable through the proxy`);
      }
      const prefix = s.match.pathPrefix;
      const rest = s.stripPrefix && prefix !== undefined ? target.path.slice(prefix.endsWith('/') ? prefix.length - 1 : prefix.length) : target.path;
      const id = appRequestId(req.headers['x-request-id']) ?? randomUUID();
      const upstreamHost = s.preserveHost && target.authority !== '' ? target.authority : (route.balancer.endpoints[0]?.authority ?? '');
      ctx = new RequestContext({
        id,
        raw: req,
        res,
        route,
        path: target.path,
        forwardPath: rest + target.query,
        headers: upstreamRequestHeaders(req.headers, upstreamHost, id),
        trustControlHeaders: s.trustControlHeaders || isLoopback(req.socket.remoteAddress),
        startedAt,
      });
    } catch (e) {
      answerEarly(req, res, toLegateError(e), startedAt);
      return;
    }
    generation.enter();
    parsing.set(req.socket, ctx);
    // The app hung up before the response ended: stop the upstream work now.
    res.once('close', () => {
      if (!res.writableFinished) ctx.abort(new LegateError('client-closed', 'the app closed the connection'));
    });
    // Node emits 'request' from inside the parser, which may then reject the rest of the same chunk (an invalid
    // Transfer-Encoding, a bad first chunk): started on the next tick, the chain sees that verdict (the abort from
    // clientError) before it opens any upstream connection.
    process.nextTick(() => void run(ctx, generation));
  };

  const server = http.createServer(
    {
      maxHeaderSize: limits.maxHeaderSizeBytes,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: 65_000,
      connectionsCheckingInterval: checkingIntervalMs(limits),
      // Reject `Transfer-Encoding` + `Content-Length` together and other smuggling shapes.
      insecureHTTPParser: false,
      requireHostHeader: false,
      // Node subclasses that count body bytes as they pass (one addition per chunk), for the access log.
      IncomingMessage: CountingIncomingMessage,
      ServerResponse: CountingServerResponse,
    },
    onRequest,
  );
  // The same setter a reload uses, so a limit set at start and one set by a reload cannot differ.
  applyServerLimits(server, limits);
  // One over the limit, so that headerShapeError sees that it was passed without Node building thousands of entries.
  server.maxHeadersCount = MAX_REQUEST_HEADERS + 1;

  // Node closes connections past maxConnections at accept, before a byte is read; the operator hears of it here.
  let dropped = 0;
  let lastDrop: DropArgument | undefined;
  let dropTimer: NodeJS.Timeout | undefined;
  const reportDrops = (): void => {
    if (dropped > 0) host.onConnectionsDropped?.(dropped, server.maxConnections, lastDrop);
    dropped = 0;
  };
  server.on('drop', (data?: DropArgument) => {
    dropped++;
    lastDrop = data;
    if (dropTimer !== undefined) return;
    reportDrops();
    dropTimer = setTimeout(() => {
      dropTimer = undefined;
      reportDrops();
    }, DROP_REPORT_MS);
    dropTimer.unref();
  });
  server.on('close', () => clearTimeout(dropTimer));

  server.on('connect', (req: IncomingMessage, socket: Socket) => {
    const id = appRequestId(req.headers['x-request-id']) ?? randomUUID();
    const body = JSON.stringify({
      error: 'connect-unsupported',
      message: 'legate does not tunnel CONNECT: call http:// URLs through it and let legate originate TLS to the upstream',
      route: null,
      requestId: id,
      attempts: 0,
    });
    closeAfterAnswer(socket);
    socket.end(
      'HTTP/1.1 405 Method Not Allowed\r\n' +
        'content-type: application/json\r\n' +
        'x-legate-error: connect-unsupported\r\n' +
        `x-request-id: ${id}\r\n` +
        'x-legate-attempts: 0\r\n' +
        'allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n' +
        'connection: close\r\n' +
        `content-length: ${Buffer.byteLength(body)}\r\n\r\n` +
        body,
    );
    host.onComplete({
      early: true,
      id,
      method: 'CONNECT',
      path: (req.url ?? '').slice(0, 200),
      status: 405,
      errorCode: 'connect-unsupported',
      startedAt: performance.now(),
      bytesOut: Buffer.byteLength(body),
    });
  });

  // Node's parser repeats its error for every later chunk on the socket: the first one is answered, the rest ignored.
  const failedSockets = new WeakSet<Socket>();
  server.on('clientError', (err: Error & { code?: string }, socket: Socket) => {
    if (failedSockets.has(socket)) return;
    failedSockets.add(socket);
    host.onClientError?.(err, socket);
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const message = status === 408 ? 'the app did not finish its request in time' : `malformed request: ${err.code ?? err.message}`;
    const current = parsing.get(socket);
    if (current !== undefined) {
      if (!current.raw.complete) {
        // The fault is in the body of a request the chain is running (a bad chunk, requestTimeout): the chain
        // answers it, with `connection: close`, or resets the app if its response had started.
        current.abort(new AppRequestError(status === 431 ? 400 : status, message));
      } else {
        // The fault is in a later pipelined request: the one in flight finishes, then the connection closes.
        const res = current.appResponse;
        if (!res.headersSent) res.shouldKeepAlive = false;
        res.once('close', () => socket.destroy());
      }
      closeAfterAnswer(socket);
      return;
    }
    if (!socket.writable || (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage?.headersSent === true) {
      socket.destroy();
      return;
    }
    const body = JSON.stringify({ error: 'bad-request', message, route: null, requestId: null, attempts: 0 });
    closeAfterAnswer(socket);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Bad Request'}\r\ncontent-type: application/json\r\nx-legate-error: bad-request\r\nx-legate-attempts: 0\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  });

  return server;
}
