/**
 * build(config): the logger, connection pools, forwarder, listeners and the
 * current generation of compiled routes; reload and graceful drain.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { composeChain } from './chain.js';
import { formatIssue, loadConfigText } from './config/load.js';
import type { HostPort, LegateConfig, RouteSettings, ServerLimits } from './config/model.js';
import { createForwarder, type Forwarder } from './layers/forward.js';
import { hasHeaderRules, headerRulesOf } from './layers/header-rules.js';
import type { AccessLog } from './observability/access-log.js';
import type { Logger } from './observability/logger.js';
import { createObserver, type Observer } from './observability/observer.js';
import { TlsAgents } from './tls/tls-agents.js';
import { createAdminListener } from './server/admin-listener.js';
import { applyServerLimits, createProxyListener, type EarlyOutcome, type ListenerRole } from './server/proxy-listener.js';
import type { RequestContext } from './proxy/context.js';
import { AgentPool, httpAgentFactory } from './runtime/agents.js';
import { buildGeneration, droppedStates, type Generation, MAIN_LISTENER } from './runtime/generation.js';

export interface AppOptions {
  readonly logger: Logger;
}

export interface ReloadResult {
  readonly ok: boolean;
  readonly errors: readonly string[];
}

async function listen(server: Server, at: HostPort): Promise<void> {
  const listening = once(server, 'listening');
  server.listen(at.port, at.host.replace(/^\[|\]$/g, ''));
  try {
    // once() rejects with the 'error' event's error (a port taken, an address not ours).
    await listening;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`cannot listen on ${at.text}: ${err.code ?? err.message}`);
  }
}

async function close(server: Server): Promise<void> {
  if (!server.listening) return;
  const closed = once(server, 'close');
  server.close();
  server.closeIdleConnections();
  await closed;
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host.startsWith('127.') || host === '[::1]' || host === '::1';
}

/** The effective config for `/config` and `explain`: units spelled out, secrets never included. */
export function configView(config: LegateConfig): unknown {
  const route = (r: RouteSettings) => ({
    name: r.name,
    match: {
      ...r.match,
      methods: r.match.methods === undefined ? undefined : [...r.match.methods],
    },
    listen: r.listen?.text,
    upstream: {
      endpoints: r.upstream.endpoints.map((e) => ({ url: e.url.href, weight: e.weight, tls: e.tls })),
      discovery: r.upstream.discovery,
    },
    stripPrefix: r.stripPrefix,
    preserveHost: r.preserveHost,
    timeoutMs: r.timeoutMs,
    idleTimeoutMs: r.idleTimeoutMs,
    limits: r.limits,
    retry: { ...r.retry, methods: [...r.retry.methods] },
    circuitBreaker: r.circuitBreaker,
    tls: r.tls,
    optOut: [...r.optOut],
    rateLimit: r.rateLimit,
    headers: {
      // Values may be credentials: only the names are shown.
      request: { set: r.headers.request.set.map(([n]) => n), remove: r.headers.request.remove },
      response: { set: r.headers.response.set.map(([n]) => n), remove: r.headers.response.remove },
    },
    trustControlHeaders: r.trustControlHeaders,
  });
  return {
    file: config.file,
    listen: config.listen.text,
    admin: config.admin.text,
    drainTimeoutMs: config.drainTimeoutMs,
    logLevel: config.logLevel,
    accessLog: config.accessLog,
    limits: config.limits,
    routes: config.routes.map(route),
  };
}

/**
 * What a reload (or the start) does to the proxy listeners, prepared before
 * anything is swapped: every address the new config wants is bound by then.
 */
interface ListenerPlan {
  /** The main listener's new server and the address it leaves, when `listen` changed. */
  readonly main: { readonly server: Server; readonly was: string } | undefined;
  /** The route listeners once the new generation is in, by address. */
  readonly routes: ReadonlyMap<string, Server>;
  /** Servers the new config has no role for: retired once it is in. */
  readonly released: readonly Server[];
}

function sameLimits(a: ServerLimits, b: ServerLimits): boolean {
  return a.maxConnections === b.maxConnections && a.headersTimeoutMs === b.headersTimeoutMs && a.requestTimeoutMs === b.requestTimeoutMs && a.maxHeaderSizeBytes === b.maxHeaderSizeBytes;
}

export class LegateApp {
  readonly logger: Logger;
  readonly observer: Observer;
  readonly #agents: AgentPool;
  readonly #tls: TlsAgents;
  readonly #forwarder: Forwarder;
  #generation: Generation;
  #proxy: Server | undefined;
  #admin: Server | undefined;
  readonly #routeListeners = new Map<string, Server>();
  /** The role of each proxy listener (MAIN_LISTENER or a route's `listen`), which a reload may change. */
  readonly #roles = new WeakMap<Server, ListenerRole>();
  /** The reload in progress, if any: the next waits for it. */
  #reloads: Promise<unknown> = Promise.resolve();
  /** Listeners a reload moved away from, closing as their last requests end. */
  readonly #retiring = new Set<Server>();
  #ready = false;
  #draining = false;
  #stopping: Promise<void> | undefined;
  /** The bound admin address, once it is up (asked on every request: not looked up each time). */
  #adminAddress: string | undefined;
  #active = 0;
  #idle: (() => void) | undefined;
  /** Where access lines go now, and whether they are written at all (a reload may change either). */
  #accessLog: { destination: string; silent: boolean };

  constructor(config: LegateConfig, opts: AppOptions) {
    this.logger = opts.logger;
    this.observer = createObserver(opts.logger, { accessLog: config.accessLog, activeRequests: () => this.#active, certificates: () => this.#tls.certificates(), routes: () => this.#generation.routes });
    this.#accessLog = { destination: config.accessLog, silent: opts.logger.level === 'silent' };
    this.#tls = new TlsAgents(opts.logger);
    this.#agents = new AgentPool({ http: httpAgentFactory, https: this.#tls.factory });
    this.#tls.attach(this.#agents);
    this.#forwarder = createForwarder();
    this.#generation = this.#build(config, undefined);
    // Read certificates now, not on first use, so expiry is reported and warned about from the start.
    this.#tls.preload(config.routes.flatMap((r) => r.upstream.endpoints));
  }

  #build(config: LegateConfig, previous: Generation | undefined): Generation {
    const forward = this.#forwarder.handler;
    return buildGeneration(config, previous, {
      agents: this.#agents,
      compose: (route) => composeChain(route, { forward, observer: this.observer }),
      logger: this.logger,
    });
  }

  get config(): LegateConfig {
    return this.#generation.config;
  }

  get activeRequests(): number {
    return this.#active;
  }

  #listenerHost(key: string, limits: ServerLimits): Server {
    const role: ListenerRole = { key };
    const server = createProxyListener(
      {
        current: () => this.#generation,
        draining: () => this.#draining,
        onComplete: (ctx) => this.#onComplete(ctx),
        onClientError: (err, socket) =>
          this.logger.debug({ err: err.message, code: (err as NodeJS.ErrnoException).code, remoteAddress: socket.remoteAddress }, 'malformed request from the app'),
        adminAddress: () => this.#adminAddress,
        onConnectionsDropped: (dropped, maxConnections, last) =>
          this.logger.warn(
            { listener: role.key, dropped, maxConnections, remoteAddress: last?.remoteAddress },
            'connection limit reached: new connections closed at accept (limits.maxConnections)',
          ),
      },
      role,
      limits,
    );
    this.#roles.set(server, role);
    this.#track(server);
    return server;
  }

  #adminListener(): Server {
    return createAdminListener({
      ready: () => this.#ready,
      draining: () => this.#draining,
      configView: () => configView(this.#generation.config),
      metrics: () => this.observer.metrics(),
    });
  }

  #onComplete(outcome: RequestContext | EarlyOutcome): void {
    this.observer.onComplete(outcome);
    this.#active--;
    if (this.#active === 0) this.#idle?.();
  }

  /** Binds every listener; rejects (and closes what it opened) if one cannot bind. */
  async start(): Promise<void> {
    const config = this.#generation.config;
    const proxy = this.#listenerHost(MAIN_LISTENER, config.limits);
    const admin = this.#adminListener();
    try {
      await listen(proxy, config.listen);
      this.#proxy = proxy;
      await listen(admin, config.admin);
      this.#admin = admin;
      this.#adminAddress = this.address('admin');
      this.#commitProxyListeners(await this.#planProxyListeners(config, undefined));
    } catch (e) {
      await this.#closeAll();
      throw e;
    }
    for (const at of [config.listen, config.admin, ...config.routes.flatMap((r) => (r.listen ? [r.listen] : []))]) {
      if (!isLoopbackHost(at.host)) {
        this.logger.warn({ address: at.text }, `listening on ${at.text}, which is reachable from other hosts`);
      }
    }
    this.#ready = true;
    this.logger.info(
      { listen: this.address('proxy'), admin: this.address('admin'), routes: config.routes.length, file: config.file },
      'legate started',
    );
  }

  #track(server: Server): void {
    // Prepended so the count rises before the handler can finish the request synchronously.
    server.prependListener('request', () => {
      this.#active++;
    });
    server.prependListener('connect', () => {
      this.#active++;
    });
  }

  /**
   * Binds what `config` wants of the proxy listeners and is not bound yet.
   * Sockets are kept by address, as nginx keeps its listening sockets across
   * a reload: one the reload releases from its role (the address the main
   * listener leaves, a route listener no route keeps) goes to a new role that
   * wants that very address, rather than being bound a second time, which
   * could only fail. Throws, having closed what it bound, if an address
   * cannot be bound; nothing in use changes until the plan is committed.
   */
  async #planProxyListeners(config: LegateConfig, previous: LegateConfig | undefined): Promise<ListenerPlan> {
    const wanted = new Map<string, HostPort>();
    for (const r of config.routes) if (r.listen !== undefined) wanted.set(r.listen.text, r.listen);
    const released = new Map<string, Server>();
    const proxy = this.#proxy;
    const mainLeaves = previous !== undefined && config.listen.text !== previous.listen.text ? previous.listen.text : undefined;
    if (mainLeaves !== undefined && proxy !== undefined) released.set(mainLeaves, proxy);
    for (const [key, server] of this.#routeListeners) if (!wanted.has(key)) released.set(key, server);
    const adminLeaves = previous !== undefined && config.admin.text !== previous.admin.text ? previous.admin.text : undefined;
    const bound: Server[] = [];
    const take = async (key: string, at: HostPort): Promise<Server> => {
      const handed = released.get(at.text);
      if (handed !== undefined) {
        released.delete(at.text);
        return handed;
      }
      if (at.text === adminLeaves) throw new Error(`cannot listen on ${at.text}: the admin listener holds it until this reload applies; move the admin listener off it in a reload of its own first`);
      const server = this.#listenerHost(key, config.limits);
      bound.push(server);
      await listen(server, at);
      return server;
    };
    try {
      const main = mainLeaves !== undefined && proxy !== undefined ? { server: await take(MAIN_LISTENER, config.listen), was: mainLeaves } : undefined;
      const routes = new Map<string, Server>();
      for (const [key, at] of wanted) routes.set(key, this.#routeListeners.get(key) ?? (await take(key, at)));
      return { main, routes, released: [...released.values()] };
    } catch (e) {
      await Promise.all(bound.map(close));
      throw e;
    }
  }

  /** Puts a plan's listeners in their roles (with the new generation already in) and retires those left without one. */
  #commitProxyListeners(plan: ListenerPlan): void {
    for (const [key, server] of plan.routes) this.#setRole(server, key);
    if (plan.main !== undefined) {
      this.#setRole(plan.main.server, MAIN_LISTENER);
      this.#proxy = plan.main.server;
      this.#logMove('proxy', plan.main.was);
    }
    this.#routeListeners.clear();
    for (const [key, server] of plan.routes) this.#routeListeners.set(key, server);
    for (const server of plan.released) this.#retire(server);
  }

  #setRole(server: Server, key: string): void {
    const role = this.#roles.get(server);
    if (role !== undefined) role.key = key;
  }

  /** The bound address of a listener, `host:port` (useful when the config said port 0). */
  address(which: 'proxy' | 'admin' | string): string | undefined {
    const server = which === 'proxy' ? this.#proxy : which === 'admin' ? this.#admin : this.#routeListeners.get(which);
    const a = server?.address() as AddressInfo | null | undefined;
    if (a === null || a === undefined) return undefined;
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  current(): Generation {
    return this.#generation;
  }

  /**
   * Validates `text` and, when it is good, swaps it in atomically. A bad file
   * changes nothing: the old config keeps serving.
   */
  async reloadText(text: string, file = this.#generation.config.file): Promise<ReloadResult> {
    const loaded = loadConfigText(text, file);
    if (!loaded.ok) {
      const errors = loaded.issues.map(formatIssue);
      this.observer.reload('rejected');
      this.logger.error({ file, errors }, 'config reload rejected; the previous config keeps serving');
      return { ok: false, errors };
    }
    return this.apply(loaded.config);
  }

  /**
   * Swaps in `config` (already validated). Reloads run one at a time, each
   * against what the one before left: a file watcher's and a SIGHUP's for
   * the same edit must not both try to bind a moved listener.
   */
  apply(config: LegateConfig): Promise<ReloadResult> {
    const run = this.#reloads.then(() => this.#apply(config));
    this.#reloads = run.catch(() => undefined);
    return run;
  }

  async #apply(config: LegateConfig): Promise<ReloadResult> {
    const previous = this.#generation;
    const rejected = (e: unknown): ReloadResult => {
      const errors = [(e as Error).message];
      this.observer.reload('rejected');
      this.logger.error({ file: config.file, errors }, 'config reload rejected; the previous config keeps serving');
      return { ok: false, errors };
    };
    // A new access log destination (or `logLevel` turning it on or off) is opened before anything
    // changes: a file that cannot be opened rejects the reload, as it stops a start.
    const accessLog = { destination: config.accessLog, silent: process.env.LOG_LEVEL === undefined ? config.logLevel === 'silent' : this.#accessLog.silent };
    let newAccessLog: AccessLog | undefined;
    if (accessLog.destination !== this.#accessLog.destination || accessLog.silent !== this.#accessLog.silent) {
      try {
        newAccessLog = this.observer.openAccessLog(accessLog.destination, accessLog.silent);
      } catch (e) {
        return rejected(e);
      }
    }
    // A changed `listen`, `admin` or route `listen` is bound before anything changes, next to the old
    // address (a port already taken rejects the reload); a listener left without a role closes once the new
    // config is in. An address one proxy listener leaves and another takes keeps its socket (#planProxyListeners).
    let admin: Server | undefined;
    let plan: ListenerPlan | undefined;
    if (this.#proxy !== undefined) {
      try {
        if (config.admin.text !== previous.config.admin.text) {
          const proxyHeld = config.admin.text === previous.config.listen.text || this.#routeListeners.has(config.admin.text);
          if (proxyHeld) throw new Error(`cannot listen on ${config.admin.text}: a proxy listener holds it until this reload applies; move that listener off it in a reload of its own first`);
          admin = this.#adminListener();
          await listen(admin, config.admin);
        }
        plan = await this.#planProxyListeners(config, previous.config);
      } catch (e) {
        if (admin !== undefined) void close(admin);
        void newAccessLog?.close();
        return rejected(e);
      }
    }
    const next = this.#build(config, previous);
    this.#generation = next;
    if (process.env.LOG_LEVEL === undefined) this.logger.level = config.logLevel;
    previous.retire(droppedStates(previous, next));
    this.#agents.retainOnly(next.agentIds);
    // Identities the reload dropped are no longer watched, reported, or rebuilt by a later rotation.
    this.#tls.retain(next.agentIds);
    this.#tls.preload(config.routes.flatMap((r) => r.upstream.endpoints));
    this.observer.reload('applied');
    if (plan !== undefined) this.#commitProxyListeners(plan);
    if (admin !== undefined) {
      const old = this.#admin;
      this.#admin = admin;
      this.#adminAddress = this.address('admin');
      if (old !== undefined) this.#retire(old);
      this.#logMove('admin', previous.config.admin.text);
    }
    if (!sameLimits(config.limits, previous.config.limits)) {
      // Route listeners opened by this reload were made with them already.
      for (const server of [this.#proxy, ...this.#routeListeners.values()]) if (server !== undefined) applyServerLimits(server, config.limits);
      this.logger.info({ limits: config.limits }, 'server limits applied');
    }
    if (newAccessLog !== undefined) {
      this.#accessLog = accessLog;
      this.observer.useAccessLog(newAccessLog).catch((e: unknown) => {
        this.logger.error({ err: (e as Error).message }, 'closing the previous access log failed');
      });
      this.logger.info({ accessLog: accessLog.destination, silent: accessLog.silent }, 'access log switched');
    }
    const kept = next.routes.filter((r) => previous.routes.some((p) => p.state === r.state)).map((r) => r.name);
    this.logger.info({ file: config.file, routes: next.routes.length, keptState: kept }, 'config reload applied');
    return { ok: true, errors: [] };
  }

  /** Stops `server` accepting; its requests in flight finish, and each connection closes after its last response. */
  #retire(server: Server): void {
    this.#retiring.add(server);
    // As in a drain: read when a response finishes, so a connection closes right after it.
    server.keepAliveTimeout = 1;
    void close(server).then(() => this.#retiring.delete(server));
  }

  /** Says that the proxy or admin listener now takes connections somewhere else. */
  #logMove(which: 'proxy' | 'admin', was: string): void {
    const address = this.address(which);
    this.logger.info({ listener: which, address, was }, `${which} listener moved to ${address ?? '?'}`);
    const at = which === 'proxy' ? this.#generation.config.listen : this.#generation.config.admin;
    if (!isLoopbackHost(at.host)) this.logger.warn({ address: at.text }, `listening on ${at.text}, which is reachable from other hosts`);
  }

  /**
   * Re-reads now the files the current routes use besides routes.yaml: TLS
   * certificates and keys, and `${file:}` header values (SIGHUP, as nginx
   * re-reads its certificates on HUP). Their watchers do this on their own
   * within a second or two; this is for a filesystem whose events do not
   * reach legate, or an operator who wants it applied before the next poll.
   * Only files whose content changed are applied, with the same checks and
   * log lines as a change the watchers find.
   */
  refreshFiles(): void {
    this.#tls.check();
    for (const route of this.#generation.routes) if (hasHeaderRules(route.settings)) headerRulesOf(route).check();
  }

  /**
   * Opens the access log file again by its name, after the lines so far are
   * written to the old one: log rotation (SIGUSR1, as `nginx -s reopen` and
   * Envoy; SIGHUP too). Nothing when access lines go to stdout or stderr.
   */
  reopenLogs(): void {
    this.observer.reopenAccessLog();
  }

  /**
   * Graceful stop (SPEC §10): readiness answers 503 at once, listeners stop
   * accepting, keep-alive connections close as soon as their response ends,
   * requests in flight get up to `drainTimeout` to finish; then every socket
   * is closed and the access log flushed. The admin listener stays up until
   * the end so orchestrators can watch readiness fail.
   */
  /** Idempotent: a second call waits for the drain the first one started. */
  stop(drainTimeoutMs = this.#generation.config.drainTimeoutMs): Promise<void> {
    this.#stopping ??= this.#drainAndClose(drainTimeoutMs);
    return this.#stopping;
  }

  async #drainAndClose(drainTimeoutMs: number): Promise<void> {
    this.#draining = true;
    const began = Date.now();
    this.logger.info({ active: this.#active, drainTimeoutMs }, 'drain started');
    const servers = [this.#proxy, ...this.#routeListeners.values()].filter((s): s is Server => s !== undefined);
    for (const s of servers) {
      // Read when a response finishes: a connection that served its last request closes right after it,
      // instead of idling for the keep-alive timeout (0 would mean "never").
      s.keepAliveTimeout = 1;
      s.close();
      s.closeIdleConnections();
    }
    let drained = true;
    if (this.#active > 0) {
      drained = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), drainTimeoutMs);
        this.#idle = () => {
          clearTimeout(timer);
          resolve(true);
        };
      });
      this.#idle = undefined;
    }
    const unfinished = this.#active;
    if (!drained) this.logger.warn({ unfinished, drainTimeoutMs }, 'drain timeout passed: closing the connections of unfinished requests');
    await this.#closeAll();
    this.logger.info({ unfinished, durationMs: Date.now() - began }, 'drain finished; stopped');
  }

  async #closeAll(): Promise<void> {
    const servers = [this.#proxy, this.#admin, ...this.#routeListeners.values(), ...this.#retiring].filter((s): s is Server => s !== undefined);
    for (const s of servers) s.closeAllConnections();
    await Promise.all(servers.map(close));
    if (this.#active > 0) {
      // Requests cut just now finish asynchronously (the abort travels down the chain): let them reach the
      // access log before it closes, but never hang the stop on one.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1_000);
        this.#idle = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#idle = undefined;
    }
    this.#routeListeners.clear();
    this.#forwarder.close();
    this.#agents.destroy();
    this.#tls.close();
    await this.observer.close();
    this.#generation.retire(this.#generation.states());
  }
}
