/**
 * A real DNS server for tests (dns2 over UDP on 127.0.0.1, a random port)
 * whose records a test changes while legate runs, and upstream servers on
 * several loopback addresses (127.0.0.2, 127.0.0.3, … are all loopback on
 * Linux) sharing one port, as the endpoints of one DNS name would.
 */
import { once } from 'node:events';
import http from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import dns2, { Packet, type Resource } from 'dns2';

export interface SrvTarget {
  readonly target: string;
  readonly port: number;
  readonly weight?: number;
  readonly priority?: number;
}

interface Zone {
  a: string[];
  aaaa: string[];
  srv: SrvTarget[];
  ttl: number;
}

export interface TestDnsServer {
  readonly port: number;
  /** `127.0.0.1:PORT`, for `discovery.resolver`. */
  readonly address: string;
  /** Every question received, as `TYPE name`, in order. */
  readonly queries: string[];
  /** Sets the A records of `name` (replacing them); `ttl` in seconds. */
  setA(name: string, addresses: readonly string[], ttl?: number): void;
  setAAAA(name: string, addresses: readonly string[], ttl?: number): void;
  setSrv(name: string, targets: readonly SrvTarget[], ttl?: number): void;
  /** Forgets `name`: it answers NXDOMAIN from now on. */
  remove(name: string): void;
  /**
   * While on, every question is answered SERVFAIL (a resolver that lost its
   * zone), and recorded in `queries` as `SERVFAIL TYPE name`: the test can
   * see lookups being made and failing.
   */
  serverFailure(on: boolean): void;
  /** Stops answering (the port is closed: lookups fail). */
  close(): Promise<void>;
}

const DEFAULT_TTL = 300;

/**
 * RFC 2782: an SRV target "MUST NOT" be compressed. dns2 compresses every name
 * it writes, which Node 24's c-ares refuses (EBADRESP) where Node 20's let it
 * pass. A writer whose `names` is not a Map turns dns2's compression off.
 */
function withoutCompression(response: object): void {
  const packet = response as { toBuffer(writer?: object): Buffer };
  const encode = packet.toBuffer.bind(packet);
  const Writer = (Packet as unknown as { Writer: new () => { names?: unknown } }).Writer;
  packet.toBuffer = (writer = new Writer()) => {
    (writer as { names?: unknown }).names = {};
    return encode(writer);
  };
}
const TYPE_NAMES = new Map<number, string>(Object.entries(Packet.TYPE).map(([k, v]) => [v, k]));

/** Starts a DNS server on 127.0.0.1 at a random UDP port. */
export async function startDnsServer(): Promise<TestDnsServer> {
  const zones = new Map<string, Zone>();
  const queries: string[] = [];
  let failing = false;
  const zone = (name: string): Zone => {
    const key = name.toLowerCase();
    let z = zones.get(key);
    if (z === undefined) {
      z = { a: [], aaaa: [], srv: [], ttl: DEFAULT_TTL };
      zones.set(key, z);
    }
    return z;
  };
  const server = dns2.createUDPServer((request, send) => {
    const response = Packet.createResponseFromRequest(request);
    for (const q of request.questions) {
      queries.push(`${failing ? 'SERVFAIL ' : ''}${TYPE_NAMES.get(q.type) ?? q.type} ${q.name}`);
      if (failing) {
        response.header.rcode = 2;
        continue;
      }
      const z = zones.get(q.name.toLowerCase());
      if (z === undefined) {
        // NXDOMAIN: the name does not exist.
        response.header.rcode = 3;
        continue;
      }
      const base = { name: q.name, class: Packet.CLASS.IN, ttl: z.ttl };
      if (q.type === Packet.TYPE.A) for (const address of z.a) response.answers.push({ ...base, type: Packet.TYPE.A, address } as Resource);
      if (q.type === Packet.TYPE.AAAA) for (const address of z.aaaa) response.answers.push({ ...base, type: Packet.TYPE.AAAA, address } as Resource);
      if (q.type === Packet.TYPE.SRV) {
        for (const t of z.srv) {
          response.answers.push({ ...base, type: Packet.TYPE.SRV, priority: t.priority ?? 10, weight: t.weight ?? 1, port: t.port, target: t.target } as Resource);
        }
      }
    }
    if (response.answers.some((a) => a.type === Packet.TYPE.SRV)) withoutCompression(response);
    void send(response).catch(() => undefined);
  });
  await server.listen(0, '127.0.0.1');
  const port = (server.address() as AddressInfo).port;
  let closed = false;
  return {
    port,
    address: `127.0.0.1:${port}`,
    queries,
    setA(name, addresses, ttl = DEFAULT_TTL) {
      const z = zone(name);
      z.a = [...addresses];
      z.ttl = ttl;
    },
    setAAAA(name, addresses, ttl = DEFAULT_TTL) {
      const z = zone(name);
      z.aaaa = [...addresses];
      z.ttl = ttl;
    },
    setSrv(name, targets, ttl = DEFAULT_TTL) {
      const z = zone(name);
      z.srv = [...targets];
      z.ttl = ttl;
    },
    remove(name) {
      zones.delete(name.toLowerCase());
    },
    serverFailure(on) {
      failing = on;
    },
    async close() {
      if (closed) return;
      closed = true;
      const done = once(server, 'close');
      server.close();
      await done;
    },
  };
}

export interface LoopbackUpstream {
  readonly address: string;
  /** Requests received. */
  readonly count: number;
  readonly server: Server;
}

export interface LoopbackUpstreams {
  /** The port all of them listen on. */
  readonly port: number;
  readonly byAddress: ReadonlyMap<string, LoopbackUpstream>;
  /** Request counts by address. */
  counts(): Record<string, number>;
  close(): Promise<void>;
}

/** Answers with the address that took the request and the Host it was sent. */
export const whoAmI = (address: string) => (req: IncomingMessage, res: ServerResponse): void => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ address, host: req.headers.host }));
};

async function bind(server: Server, port: number, host: string): Promise<void> {
  server.listen(port, host);
  await Promise.race([
    once(server, 'listening'),
    once(server, 'error').then(([e]: unknown[]) => {
      throw e;
    }),
  ]);
}

/**
 * One HTTP server per address, all on the same port (picked at random by the
 * first, then claimed on the others; retried if another process holds it).
 */
export async function startLoopbackUpstreams(
  addresses: readonly string[],
  handler: (address: string) => (req: IncomingMessage, res: ServerResponse) => void = whoAmI,
): Promise<LoopbackUpstreams> {
  for (let attempt = 0; ; attempt++) {
    const started: LoopbackUpstream[] = [];
    const sockets = new Set<Socket>();
    const closeAll = async (): Promise<void> => {
      for (const s of sockets) s.destroy();
      await Promise.all(
        started.map(async (u) => {
          if (!u.server.listening) return;
          const done = once(u.server, 'close');
          u.server.close();
          await done;
        }),
      );
    };
    let port = 0;
    try {
      for (const address of addresses) {
        let count = 0;
        const h = handler(address);
        const server = http.createServer((req, res) => {
          count++;
          h(req, res);
        });
        server.on('connection', (s: Socket) => {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
        });
        started.push({
          address,
          server,
          get count() {
            return count;
          },
        });
        await bind(server, port, address);
        port = (server.address() as AddressInfo).port;
      }
    } catch (e) {
      await closeAll();
      if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE' && attempt < 5) continue;
      throw e;
    }
    const byAddress = new Map(started.map((u) => [u.address, u]));
    return {
      port,
      byAddress,
      counts: () => Object.fromEntries(started.map((u) => [u.address, u.count])),
      close: closeAll,
    };
  }
}
