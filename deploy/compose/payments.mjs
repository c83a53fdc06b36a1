// The remote `payments` service of the docker-compose demo: HTTPS that only
// talks to clients holding a certificate from the demo CA (mutual TLS).
// It answers with the identity it saw, and /payments/flaky fails half the time
// so legate's retries have something to do.
import { readFileSync } from 'node:fs';
import https from 'node:https';

const dir = process.env.TLS_DIR ?? '/var/run/secrets/payments';
const port = Number(process.env.PORT ?? 8443);

const server = https.createServer(
  {
    key: readFileSync(`${dir}/tls.key`),
    cert: readFileSync(`${dir}/tls.crt`),
    ca: readFileSync(`${dir}/ca.crt`),
    requestCert: true,
    rejectUnauthorized: true, // no client certificate from our CA: no handshake
    minVersion: 'TLSv1.2',
  },
  (req, res) => {
    const peer = req.socket.getPeerCertificate();
    const client = peer?.subject?.CN ?? '(none)';
    const path = (req.url ?? '/').split('?')[0];
    let status = 200;
    let body = { service: 'payments', path, client, requestId: req.headers['x-request-id'] ?? null };
    if (path === '/payments/flaky' && Math.random() < 0.5) {
      status = 503;
      body = { error: 'temporarily unavailable', path };
    } else if (path === '/payments/charges' && req.method === 'POST') {
      status = 201;
      body = { ...body, charge: `ch_${Date.now().toString(36)}` };
    }
    console.log(`payments: ${req.method} ${path} from CN=${client} -> ${status}`);
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  },
);
server.on('tlsClientError', (err) => console.log(`payments: TLS handshake refused: ${err.message}`));
server.listen(port, () => console.log(`payments: https on :${port}, client certificates required`));

// PID 1 in a container gets no default signal handling: stop promptly on SIGTERM.
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
