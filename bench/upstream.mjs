/**
 * The benchmark's upstream: as fast as Node can answer, so what is measured
 * is the proxy in front of it. Keep-alive, no body parsing, responses built
 * once at start.
 *
 *   GET /small  → 200, a 39-byte JSON body
 *   GET /16k    → 200, a 16 KiB body
 *   anything else → the small body too (so a route's path mapping cannot 404 the run)
 *
 * One process serves plain HTTP on --http PORT and, with --https PORT and
 * --certs DIR, HTTPS that requires a client certificate signed by DIR/ca.pem
 * (the upstream of the mTLS route). Same handler, same process, so every
 * target in a run talks to the same upstream.
 *
 * Usage: node bench/upstream.mjs --http 18080 [--https 18443 --certs DIR]
 */
import { Buffer } from 'node:buffer';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import process from 'node:process';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    http: { type: 'string' },
    https: { type: 'string' },
    certs: { type: 'string' },
  },
});

const SMALL = Buffer.from('{"ok":true,"service":"bench-upstream"}\n');
const LARGE = Buffer.alloc(16 * 1024, 'x');

const smallHead = { 'content-type': 'application/json', 'content-length': String(SMALL.length) };
const largeHead = { 'content-type': 'application/octet-stream', 'content-length': String(LARGE.length) };

/** @param {http.IncomingMessage} req @param {http.ServerResponse} res */
function handler(req, res) {
  // The bench only sends GETs; a body, if any, is drained so the connection stays usable.
  req.resume();
  const large = req.url !== undefined && req.url.startsWith('/16k');
  res.writeHead(200, large ? largeHead : smallHead);
  res.end(large ? LARGE : SMALL);
}

// Clients (and proxies' pools) keep their connections: never be the side that closes an idle one mid-run.
const serverOptions = { keepAliveTimeout: 120_000, headersTimeout: 60_000, requestTimeout: 0 };

const servers = [];
if (values.http !== undefined) {
  const s = http.createServer(serverOptions, handler);
  s.listen(Number(values.http), '127.0.0.1');
  servers.push(s);
}
if (values.https !== undefined) {
  if (values.certs === undefined) throw new Error('--https needs --certs DIR');
  const dir = values.certs;
  const s = https.createServer(
    {
      ...serverOptions,
      key: readFileSync(path.join(dir, 'server-key.pem')),
      cert: readFileSync(path.join(dir, 'server.pem')),
      ca: readFileSync(path.join(dir, 'ca.pem')),
      // mTLS: a client without a certificate from our CA is refused at the handshake.
      requestCert: true,
      rejectUnauthorized: true,
    },
    handler,
  );
  s.listen(Number(values.https), '127.0.0.1');
  servers.push(s);
}

const shutdown = () => {
  for (const s of servers) {
    s.close();
    s.closeAllConnections();
  }
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
