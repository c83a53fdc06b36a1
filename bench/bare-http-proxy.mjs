/**
 * The floor of legate's forwarding engine: http-proxy (the same package and
 * version legate forwards with) behind a plain http server, with a keep-alive
 * agent set up as legate's pools are. No routing, no headers rewritten, no
 * logs, no metrics. legate's full chain is measured against this: everything
 * legate adds must cost (next to) nothing on top of it.
 *
 * Usage: node bench/bare-http-proxy.mjs --port 18081 --upstream http://127.0.0.1:18080
 */
import http from 'node:http';
import process from 'node:process';
import { parseArgs } from 'node:util';
import httpProxy from 'http-proxy';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    upstream: { type: 'string' },
  },
});
if (values.port === undefined || values.upstream === undefined) {
  process.stderr.write('usage: node bench/bare-http-proxy.mjs --port PORT --upstream http://127.0.0.1:PORT\n');
  process.exit(2);
}

// Same pool settings as src/runtime/agents.ts, so the comparison is engine against engine.
const agent = new http.Agent({
  keepAlive: true,
  keepAliveMsecs: 1_000,
  maxSockets: Infinity,
  maxFreeSockets: 1_024,
  scheduling: 'lifo',
  timeout: 30_000,
});

const proxy = httpProxy.createProxyServer({ target: values.upstream, agent, xfwd: false });
proxy.on('error', (_err, _req, res) => {
  // `res` is a ServerResponse for http requests; answer like a proxy would.
  if ('headersSent' in res && !res.headersSent) {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end('bad gateway\n');
  } else {
    res.destroy();
  }
});

const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => proxy.web(req, res));
server.listen(Number(values.port), '127.0.0.1');

const shutdown = () => {
  server.close();
  server.closeAllConnections();
  agent.destroy();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
