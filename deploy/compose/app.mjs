// The "legacy app" of the docker-compose demo. It knows one thing about the
// outside world: its base URL, http://localhost:15001 — legate, in the same
// network namespace. It speaks plain HTTP; legate adds mTLS, retries, timeouts
// and circuit breaking on the way to https://payments:8443.
/* global fetch, AbortSignal */
import { setTimeout as sleep } from 'node:timers/promises';

const base = (process.env.BASE_URL ?? 'http://localhost:15001').replace(/\/$/, '');
const every = Number(process.env.INTERVAL_MS ?? 3000);

const calls = [
  { method: 'GET', path: '/payments/health' },
  { method: 'POST', path: '/payments/charges', body: { amount: 1250, currency: 'EUR' } },
  { method: 'GET', path: '/payments/flaky' }, // fails half the time upstream; legate retries it
  { method: 'GET', path: '/inventory/items' }, // no route: legate answers 404 no-route itself
];

async function call({ method, path, body }) {
  const started = Date.now();
  try {
    const res = await fetch(base + path, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = (await res.text()).replace(/\s+/g, ' ').slice(0, 120);
    const h = (n) => res.headers.get(n) ?? '-';
    console.log(
      `app: ${method} ${path} -> ${res.status} in ${Date.now() - started}ms` +
        ` route=${h('x-legate-route')} attempts=${h('x-legate-attempts')} error=${h('x-legate-error')} ${text}`,
    );
  } catch (err) {
    // Before legate is up (it starts after this container) the port is closed.
    console.log(`app: ${method} ${path} -> ${err.cause?.code ?? err.name}: is legate up yet?`);
  }
}

let stopping = false;
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { stopping = true; process.exit(0); });

console.log(`app: calling ${base} every ${every}ms`);
while (!stopping) {
  for (const c of calls) await call(c);
  await sleep(every);
}
