/**
 * Header rules per route (SPEC §12): set, replace and remove request and
 * response headers, so the app never holds the credential it needs. Request
 * rules run once per request, before the retries, on the headers every try
 * sends; response rules apply to the response the chain returns. `set`
 * replaces a header of the same name, whatever the app or upstream sent;
 * `remove` runs after `set`.
 *
 * Headers legate owns are never touched by a rule: hop-by-hop headers
 * (RFC 9110 §7.6.1), the message framing (`content-length`) and `host`
 * (set from the upstream URL or `preserveHost`). Such a rule is ignored
 * with a warning when the route's rules are compiled.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import pino from 'pino';
import type { HeaderRuleSettings, RouteSettings } from '../config/model.js';
import { LegateError } from '../errors.js';
import { isHopByHop } from '../proxy/headers.js';
import type { Layer, UpstreamResponse } from '../proxy/types.js';
import type { RouteRuntime } from '../runtime/route-runtime.js';
import { SecretValues, type RenderedValue, type SecretValuesOptions } from '../runtime/secret-values.js';

/** The route-state key of a route's compiled rules (and the file watcher they own). */
export const HEADER_RULES_STATE = 'header-rules';

/** True for a header no rule may set or remove (see the module comment): legate owns framing and routing. */
export function isProtectedHeader(name: string): boolean {
  const n = name.toLowerCase();
  return isHopByHop(n) || n === 'content-length' || n === 'host';
}

interface CompiledSide {
  readonly set: ReadonlyArray<{ readonly name: string; readonly value: RenderedValue }>;
  readonly remove: readonly string[];
}

/** One route's rules, ready to apply; owns the watcher of the files its values read. */
export class CompiledHeaderRules {
  readonly request: CompiledSide;
  readonly response: CompiledSide;
  readonly #values: SecretValues;
  readonly #route: string;

  constructor(route: string, headers: RouteSettings['headers'], opts: SecretValuesOptions = {}) {
    const logger = opts.logger ?? pino({ enabled: false });
    this.#route = route;
    this.#values = new SecretValues({ ...opts, context: { route, ...opts.context } });
    const side = (which: 'request' | 'response', rules: HeaderRuleSettings): CompiledSide => {
      const keep = (name: string, verb: string): boolean => {
        if (!isProtectedHeader(name)) return true;
        logger.warn({ route, header: name, side: which }, `header rule ignored: legate never lets a rule ${verb} ${name} (hop-by-hop, framing or host)`);
        return false;
      };
      return {
        set: rules.set.filter(([name]) => keep(name, 'set')).map(([name, template]) => ({ name, value: this.#values.compile(template) })),
        remove: rules.remove.filter((name) => keep(name, 'remove')),
      };
    };
    this.request = side('request', headers.request);
    this.response = side('response', headers.response);
  }

  /** True when there is nothing to do on either side. */
  get empty(): boolean {
    return this.request.set.length + this.request.remove.length + this.response.set.length + this.response.remove.length === 0;
  }

  /** Files the values read (for diagnostics and tests). */
  get files(): string[] {
    return this.#values.files;
  }

  /** Re-reads the files now (the watcher does it by itself; for tests and SIGHUP-like triggers). */
  check(): void {
    this.#values.check();
  }

  /** Applies the request rules to the headers every try will send. Throws when a value cannot be rendered. */
  applyToRequest(headers: OutgoingHttpHeaders): void {
    for (const { name, value } of this.request.set) headers[name] = this.#render(name, value);
    for (const name of this.request.remove) delete headers[name];
  }

  /** The response headers after the response rules; the input is left as it is. */
  applyToResponse(headers: IncomingHttpHeaders): IncomingHttpHeaders {
    const out: IncomingHttpHeaders = { ...headers };
    for (const { name, value } of this.response.set) {
      const v = value.value();
      // A response is already on its way: a value that cannot be rendered is left out rather than failing it.
      if (v !== undefined) out[name] = v;
    }
    for (const name of this.response.remove) delete out[name];
    return out;
  }

  #render(name: string, value: RenderedValue): string {
    const v = value.value();
    if (v !== undefined) return v;
    // Failing closed: sending the request without its credential would only hide the problem upstream.
    throw new LegateError('internal-error', `header rule for ${name} on route ${this.#route} has no value: ${value.problem() ?? 'unknown problem'}`);
  }

  /** Closes the file watcher. */
  dispose(): void {
    this.#values.dispose();
  }
}

/** The compiled rules of a route, compiled on first use (silently) when the generation did not. */
export function headerRulesOf(route: RouteRuntime): CompiledHeaderRules {
  return route.state.get(HEADER_RULES_STATE, () => new CompiledHeaderRules(route.name, route.settings.headers));
}

/** True when the route has any header rule. */
export function hasHeaderRules(settings: RouteSettings): boolean {
  const h = settings.headers;
  return h.request.set.length + h.request.remove.length + h.response.set.length + h.response.remove.length > 0;
}

/**
 * The header rules layer: request rules once, before the retries below it
 * call the forwarder; response rules on what comes back up.
 */
export function createHeaderRulesLayer(): Layer {
  return (next) => (req) => {
    // No rules: no extra promise on the hot path.
    if (!hasHeaderRules(req.route.settings)) return next(req);
    const rules = headerRulesOf(req.route);
    try {
      rules.applyToRequest(req.headers);
    } catch (e) {
      return Promise.reject(e);
    }
    if (rules.response.set.length + rules.response.remove.length === 0) return next(req);
    return next(req).then((response): UpstreamResponse => ({ ...response, headers: rules.applyToResponse(response.headers) }));
  };
}
