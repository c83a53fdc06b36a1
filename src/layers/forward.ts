/**
 * The terminal layer: one try at one endpoint, over the endpoint's keep-alive
 * pool, with Node's own `http.request`. It resolves with the upstream's
 * response head and leaves the body unread (streamed to the app by
 * respond.ts), or rejects with an UpstreamError. Each call is one try; the
 * retry layer may call again.
 *
 * legate used http-proxy here until its defects outweighed what it did for
 * legate (which by then was only calling `http.request` and piping the body):
 * it re-joins the path with `url.parse` (collapsing `//`), gives a DELETE or
 * OPTIONS without Content-Length a `Content-Length: 0` even when a chunked
 * body follows (request smuggling), leaves two listeners on the app's request
 * per try, and calls `util._extend`, deprecated with a warning on Node 22+.
 * README "Dependencies" has the benchmark.
 */
import http from 'node:http';
import https from 'node:https';
import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { classifyUpstreamFailure, isLegateError, LegateError, UpstreamError, type LegateError as LE } from '../errors.js';
import type { AbortLike } from '../proxy/abort.js';
import { AppRequestError } from '../proxy/respond.js';
import type { Handler, ProxyRequest, TryRecord, UpstreamResponse } from '../proxy/types.js';
import type { Endpoint } from '../runtime/route-runtime.js';

/** The endpoint's base path joined to the request's part; never empty. */
export function upstreamPath(basePath: string, forwardPath: string): string {
  const joined = basePath + forwardPath;
  return joined === '' || joined.charCodeAt(0) === 63 /* ? */ ? '/' + joined : joined;
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
  [TRY_SIGNAL]?: AbortLike;
}

/**
 * Framing comes from the body this try sends, never from the app's headers
 * (Transfer-Encoding is hop-by-hop and was dropped): a body of unknown length
 * goes chunked, a known one with its length. Otherwise an upstream could read
 * a GET's unframed body as a second request that legate never routed.
 */
function frame(headers: OutgoingHttpHeaders, bodyLength: number | undefined): void {
  if (bodyLength === undefined) {
    delete headers['content-length'];
    headers['transfer-encoding'] = 'chunked';
  } else if (bodyLength > 0) {
    delete headers['transfer-encoding'];
    headers['content-length'] = String(bodyLength);
  }
}

function send(endpoint: Endpoint, req: ProxyRequest): ClientRequest {
  const transport = endpoint.protocol === 'https:' ? https : http;
  return transport.request({
    host: endpoint.hostname,
    port: endpoint.port,
    method: req.method,
    path: upstreamPath(endpoint.basePath, req.forwardPath),
    headers: req.headers,
    // TLS settings (CA, client certificate, SNI, verification) live in the agent, per TLS identity.
    agent: endpoint.agent(),
  });
}

export function createForwarder(): Forwarder {
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
      let proxyReq: ClientRequest | undefined = undefined;
      let settled = false;
      const trySignal = (req as ProxyRequest & TrySignalCarrier)[TRY_SIGNAL];

      const cleanup = (): void => {
        req.signal.removeEventListener('abort', onAbort);
        trySignal?.removeEventListener('abort', onTryAbort);
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
      const onResponse = (res: IncomingMessage): void => {
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
      };

      if (req.signal.aborted) {
        fail(req.signal.reason);
        return;
      }
      if (trySignal?.aborted) {
        fail(trySignal.reason);
        return;
      }

      // Each endpoint of a weighted list is its own authority.
      if (!req.route.settings.preserveHost) req.headers.host = endpoint.authority;
      const body: Readable | undefined = req.body.open();
      frame(req.headers, req.body.length);
      let pr: ClientRequest;
      try {
        pr = send(endpoint, req);
      } catch (e) {
        // Node refuses to build the request (a header value it will not send): nothing was sent.
        fail(new LegateError('bad-request', `the request cannot be forwarded: ${(e as Error).message}`));
        return;
      }
      proxyReq = pr;
      req.signal.addEventListener('abort', onAbort, { once: true });
      trySignal?.addEventListener('abort', onTryAbort, { once: true });
      pr.on('response', onResponse);
      pr.on('error', fail);
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
      pr.once('close', () => {
        // Every successful try closes too: nothing to build or schedule then.
        if (settled) return;
        setImmediate(() => {
          if (!settled) fail(new UpstreamError('upstream-reset', endpoint.key, `${endpoint.key} closed the connection without a usable response`));
        });
      });
      if (body === undefined) {
        // The app's own stream: sent once, on the first try.
        req.raw.once('error', fail);
        req.raw.pipe(pr);
      } else {
        body.once('error', fail);
        body.pipe(pr);
      }
    });

  return {
    handler,
    close: () => undefined,
  };
}
