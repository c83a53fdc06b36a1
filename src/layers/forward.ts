/**
 * The terminal layer: one try at one endpoint through http-proxy, over the
 * endpoint's keep-alive pool. It resolves with the upstream's response head
 * and leaves the body unread (streamed to the app by respond.ts), or rejects
 * with an UpstreamError. Each call is one try; the retry layer may call again.
 */
import type { ClientRequest, IncomingMessage } from 'node:http';
import { performance } from 'node:perf_hooks';
import { PassThrough, type Readable } from 'node:stream';
import httpProxy from 'http-proxy';
import { classifyUpstreamFailure, isLegateError, LegateError, UpstreamError, type LegateError as LE } from '../errors.js';
import { AppRequestError } from '../proxy/respond.js';
import type { Handler, ProxyRequest, TryRecord, UpstreamResponse } from '../proxy/types.js';

/** The endpoint's base path joined to the request's part; never empty. */
export function upstreamPath(basePath: string, forwardPath: string): string {
  const joined = basePath + forwardPath;
  return joined === '' || joined.charCodeAt(0) === 63 /* ? */ ? '/' + joined : joined;
}

/** Callbacks of the try in flight for one app request. */
interface TryHooks {
  onProxyReq(proxyReq: ClientRequest): void;
  onProxyRes(proxyRes: IncomingMessage): void;
}

export class IdleTimeoutError extends Error {
  readonly code = 'LEGATE_IDLE_TIMEOUT';
}

/**
 * True while the app's request body is unfinished and nothing of it waits to be
 * sent: a silence on the upstream connection then is the app's, not the
 * upstream's (which is waiting for the rest of the body, as servers do).
 */
export function appBodyStalled(raw: IncomingMessage): boolean {
  return !raw.complete && raw.readableLength === 0;
}

export interface Forwarder {
  readonly handler: Handler;
  close(): void;
}

/** Aborts a try from the outside (per-try deadline); the reason becomes the try's error. */
export const TRY_SIGNAL = Symbol('legate.trySignal');
export interface TrySignalCarrier {
  [TRY_SIGNAL]?: AbortSignal;
}

export function createForwarder(): Forwarder {
  const proxy = httpProxy.createProxyServer({
    selfHandleResponse: true,
    xfwd: false,
    changeOrigin: false,
    ws: false,
  });
  // The try in flight for each app request; tries of one request never overlap.
  const inFlight = new WeakMap<IncomingMessage, TryHooks>();

  proxy.on('proxyReq', (proxyReq, req) => inFlight.get(req)?.onProxyReq(proxyReq));
  proxy.on('proxyRes', (proxyRes, req) => inFlight.get(req)?.onProxyRes(proxyRes));
  // http-proxy reports an upstream reset that follows the app hanging up here
  // instead of to the callback; the try is already settled by the abort signal.
  proxy.on('econnreset', () => undefined);

  const handler: Handler = (req) =>
    new Promise<UpstreamResponse>((resolve, reject) => {
      const endpoint = req.endpoint;
      if (endpoint === undefined) {
        reject(new LegateError('internal-error', 'no endpoint was chosen for the try'));
        return;
      }
      const started = performance.now();
      const record: TryRecord = { endpoint: endpoint.key, ms: 0 };
      req.tries.push(record);
      let proxyReq: ClientRequest | undefined;
      let settled = false;
      // A body stream other than the app's own may already hold data; writing any of it would
      // make Node write the request head before onProxyReq sets the path. So it waits behind a
      // gate that opens in onProxyReq. (The app's stream itself starts flowing only after the
      // socket is assigned, because http-proxy pipes it after creating the request.)
      const body: Readable | undefined = req.body.open();
      // Read with the stream it describes: the length of the body this try sends, undefined when not known up front.
      const bodyLength = req.body.length;
      const gate = body === undefined ? undefined : new PassThrough();
      const trySignal = (req as ProxyRequest & TrySignalCarrier)[TRY_SIGNAL];

      // http-proxy adds an 'aborted' and an 'error' listener to the app's request on every call and never
      // removes them. A retry drops its own once settled (legate's signals cover both), or a request retried
      // ten times trips MaxListenersExceededWarning. The first try's pair is left: it ends with the request.
      let detachProxyListeners: (() => void) | undefined;
      const cleanup = (): void => {
        detachProxyListeners?.();
        req.signal.removeEventListener('abort', onAbort);
        trySignal?.removeEventListener('abort', onTryAbort);
        if (inFlight.get(req.raw) === hooks) inFlight.delete(req.raw);
        record.ms = Math.round((performance.now() - started) * 1000) / 1000;
      };
      const fail = (err: unknown): void => {
        if (settled) return;
        settled = true;
        cleanup();
        const e: LE = isLegateError(err)
          ? err
          : err instanceof IdleTimeoutError
            ? new UpstreamError('upstream-timeout', endpoint.key, `${endpoint.key} sent nothing for ${req.route.settings.idleTimeoutMs} ms`)
            : classifyUpstreamFailure(err, endpoint.key, endpoint.settings.tls?.serverName ?? endpoint.hostname);
        record.error = e.code;
        // Destroying the socket is what stops the work: no timer or socket outlives the try.
        proxyReq?.destroy();
        reject(e);
      };
      const onAbort = (): void => fail(req.signal.reason);
      const onTryAbort = (): void => fail(trySignal?.reason);

      const hooks: TryHooks = {
        onProxyReq(pr) {
          proxyReq = pr;
          if (settled) {
            pr.destroy();
            return;
          }
          if (pr.headersSent) {
            fail(new LegateError('internal-error', 'request head was written before legate could set its path'));
            return;
          }
          // Set here, not through http-proxy's URL joining, which collapses `//` and re-escapes the path.
          pr.path = upstreamPath(endpoint.basePath, req.forwardPath);
          // Framing comes from the body this try sends, never from the app's headers (Transfer-Encoding is
          // hop-by-hop and was dropped): without it Node writes a GET's chunked body unframed, and http-proxy
          // gives a DELETE or OPTIONS without Content-Length a `Content-Length: 0`; either way the upstream would
          // parse the body as a second request that legate never routed (request smuggling).
          if (bodyLength === undefined) {
            pr.removeHeader('content-length');
            pr.setHeader('transfer-encoding', 'chunked');
          } else if (bodyLength > 0) {
            pr.removeHeader('transfer-encoding');
            pr.setHeader('content-length', String(bodyLength));
          }
          if (body !== undefined && gate !== undefined) {
            body.on('error', fail);
            body.pipe(gate);
          }
          const idle = req.route.settings.idleTimeoutMs;
          if (idle > 0) {
            pr.setTimeout(idle, () =>
              pr.destroy(
                appBodyStalled(req.raw)
                  ? new AppRequestError(408, `the app sent nothing of its request body for ${idle} ms (idleTimeout of route ${req.route.name})`)
                  : new IdleTimeoutError('idle'),
              ),
            );
          }
          // A response Node does not hand over (a 101 Switching Protocols nobody asked for) ends the request
          // with neither a response nor an error; without this the try would hang until the deadline. Deferred
          // so that the error of an ordinary failure, emitted just before 'close', classifies the try.
          pr.once('close', () =>
            setImmediate(() => fail(new UpstreamError('upstream-reset', endpoint.key, `${endpoint.key} closed the connection without a usable response`))),
          );
        },
        onProxyRes(res) {
          if (settled) {
            res.destroy();
            return;
          }
          settled = true;
          cleanup();
          record.status = res.statusCode ?? 0;
          resolve({
            status: res.statusCode ?? 502,
            statusMessage: res.statusMessage,
            headers: res.headers,
            body: res,
            endpoint,
            upstreamMs: record.ms,
          });
        },
      };

      if (req.signal.aborted) {
        fail(req.signal.reason);
        return;
      }
      if (trySignal?.aborted) {
        fail(trySignal.reason);
        return;
      }
      req.signal.addEventListener('abort', onAbort, { once: true });
      trySignal?.addEventListener('abort', onTryAbort, { once: true });
      inFlight.set(req.raw, hooks);

      // Each endpoint of a weighted list is its own authority.
      if (!req.route.settings.preserveHost) req.headers.host = endpoint.authority;
      // http-proxy copies the outgoing headers from `req.headers`: give it the cleaned set.
      req.raw.headers = req.headers as IncomingMessage['headers'];
      const isRetry = req.tries.length > 1;
      const abortedBefore = isRetry ? req.raw.listenerCount('aborted') : 0;
      const errorBefore = isRetry ? req.raw.listenerCount('error') : 0;
      proxy.web(
        req.raw,
        req.appResponse,
        {
          target: { protocol: endpoint.protocol, host: endpoint.hostname, hostname: endpoint.hostname, port: endpoint.port },
          agent: endpoint.agent(),
          ignorePath: true,
          ...(gate === undefined ? {} : { buffer: gate }),
        } as httpProxy.ServerOptions,
        (err) => fail(err),
      );
      if (isRetry) {
        const aborted = req.raw.listeners('aborted').slice(abortedBefore) as Array<(...args: unknown[]) => void>;
        const errored = req.raw.listeners('error').slice(errorBefore) as Array<(...args: unknown[]) => void>;
        detachProxyListeners = () => {
          for (const l of aborted) req.raw.removeListener('aborted', l);
          for (const l of errored) req.raw.removeListener('error', l);
        };
        // A try that settled while proxy.web ran.
        if (settled) detachProxyListeners();
      }
    });

  return {
    handler,
    close: () => proxy.close(),
  };
}
