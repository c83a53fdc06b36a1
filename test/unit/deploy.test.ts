/**
 * The deployment files as someone who deploys sidecars would check them:
 * every manifest parses; the Deployment runs legate as a native sidecar with
 * probes on the admin port, resources and a locked-down security context;
 * the routes.yaml files shipped in the ConfigMap and for docker-compose pass
 * legate's own loader (against certificates generated here with the same
 * script docker-compose uses); and the paths in those configs agree with the
 * mounts that provide them.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { loadConfigText, type LoadResult } from '../../src/config/load.js';
import type { LegateConfig } from '../../src/config/model.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const k8sDir = path.join(root, 'deploy', 'kubernetes');
const read = (rel: string): string => readFileSync(path.join(root, rel), 'utf8');

/** The image's `ENV NODE_OPTIONS`, flag by flag. */
function imageNodeOptions(): string[] {
  const m = /^ENV NODE_OPTIONS=(?:"([^"]*)"|(\S+))$/m.exec(read('Dockerfile'));
  return (m?.[1] ?? m?.[2] ?? '').split(/\s+/).filter(Boolean);
}

/** The value of a `--name=value` flag in a list of Node flags. */
function flagValue(flags: readonly string[], name: string): string | undefined {
  return flags.find((f) => f.startsWith(`${name}=`))?.slice(name.length + 1);
}

// ---------------------------------------------------------------- shapes ----

interface Probe {
  httpGet?: { path?: string; port?: number | string };
  exec?: unknown;
  periodSeconds?: number;
  failureThreshold?: number;
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  readOnlyRootFilesystem?: boolean;
  allowPrivilegeEscalation?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  privileged?: boolean;
}
interface VolumeMount {
  name: string;
  mountPath: string;
  subPath?: string;
  readOnly?: boolean;
}
interface Container {
  name: string;
  image?: string;
  restartPolicy?: string;
  args?: string[];
  command?: string[];
  env?: { name: string; value?: string }[];
  ports?: { name?: string; containerPort: number }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: SecurityContext;
  volumeMounts?: VolumeMount[];
}
interface Volume {
  name: string;
  configMap?: { name: string; items?: unknown[] };
  secret?: { secretName: string; items?: unknown[]; defaultMode?: number };
}
interface PodSpec {
  initContainers?: Container[];
  containers: Container[];
  volumes?: Volume[];
  terminationGracePeriodSeconds?: number;
  securityContext?: SecurityContext;
}
interface Manifest {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string };
  data?: Record<string, string>;
  spec?: { template?: { spec?: PodSpec } };
  resources?: string[];
  components?: string[];
  images?: { name: string; newName?: string; newTag?: string }[];
}
interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string[] | string;
  network_mode?: string;
  ports?: unknown[];
  networks?: unknown;
  volumes?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition?: string }> | string[];
  user?: string;
  read_only?: boolean;
}
interface ComposeFile {
  version?: string;
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

// --------------------------------------------------------------- helpers ----

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return yamlFiles(full);
    return /\.ya?ml$/.test(name) ? [full] : [];
  });
}

/** Every document of a manifest file, read as kubectl does (YAML 1.1: `0440` is octal). */
function manifests(file: string): Manifest[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'), { version: '1.1', prettyErrors: true });
  if (!Array.isArray(docs)) throw new Error(`${file}: no YAML documents`);
  return docs.map((doc) => {
    const problems = [...doc.errors, ...doc.warnings].map((e) => e.message);
    if (problems.length > 0) throw new Error(`${path.relative(root, file)}: ${problems.join('; ')}`);
    return doc.toJS() as Manifest;
  });
}

/** The one item of a list; anything else is a broken manifest, named by `what`. */
function only<T>(items: T[], what: string): T {
  if (items.length !== 1) throw new Error(`expected exactly one: ${what}; found ${items.length}`);
  return items[0] as T;
}

function load(text: string, file: string): LoadResult {
  return loadConfigText(text, file);
}

function mustLoad(text: string, file: string): LegateConfig {
  const result = load(text, file);
  if (!result.ok) throw new Error(result.issues.map((i) => `${i.line}:${i.col} ${i.path}: ${i.message}`).join('\n'));
  return result.config;
}

/** Every tls ca/cert/key path named anywhere in a routes.yaml. */
function tlsFiles(text: string): string[] {
  const found: string[] = [];
  const walk = (value: unknown, underTls: boolean): void => {
    if (Array.isArray(value)) {
      for (const v of value) walk(v, false);
    } else if (value !== null && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) {
        if (underTls && (k === 'ca' || k === 'cert' || k === 'key') && typeof v === 'string') found.push(v);
        else walk(v, k === 'tls');
      }
    }
  };
  walk(parse(text), false);
  return found;
}

/** The text with every path under `from/` moved under `to/`: same lines, real files. */
function rebase(text: string, from: string, to: string): string {
  return text.split(`${from}/`).join(`${to}/`);
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/** The value of `--config FILE` / `-c FILE` in an argument list. */
function configArg(args: readonly string[]): string | undefined {
  const i = args.findIndex((a) => a === '--config' || a === '-c');
  return i >= 0 ? args[i + 1] : undefined;
}

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const hasCompose = spawnSync('docker-compose', ['version']).status === 0;

/** Certificates from deploy/compose/gen-certs.sh: `legate` holds ca.crt, tls.crt, tls.key. */
let certs: { dir: string; legate: string } | undefined;

beforeAll(() => {
  if (!hasOpenssl) return;
  const dir = mkdtempSync(path.join(tmpdir(), 'legate-deploy-'));
  const legate = path.join(dir, 'legate');
  const run = spawnSync('sh', [path.join(root, 'deploy', 'compose', 'gen-certs.sh')], {
    env: {
      ...process.env,
      CA_DIR: path.join(dir, 'ca'),
      LEGATE_DIR: legate,
      PAYMENTS_DIR: path.join(dir, 'payments'),
      OWNER: `${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}`,
      DAYS: '2',
    },
    encoding: 'utf8',
  });
  if (run.status !== 0) throw new Error(`gen-certs.sh failed: ${run.stderr}${run.stdout}`);
  certs = { dir, legate };
});

afterAll(() => {
  if (certs !== undefined) rmSync(certs.dir, { recursive: true, force: true });
});

// ------------------------------------------------------------ kubernetes ----

describe('deploy/kubernetes', () => {
  const files = yamlFiles(k8sDir);
  const all = files.flatMap((f) => manifests(f).map((m) => ({ file: f, m })));
  const deployment = only(
    all.filter((x) => x.m.kind === 'Deployment'),
    'one Deployment',
  ).m;
  const pod = deployment.spec?.template?.spec as PodSpec;
  const legate = only(
    (pod.initContainers ?? []).filter((c) => c.name === 'legate'),
    'legate among the initContainers',
  );
  const configFile = configArg(legate.args ?? []) ?? '/etc/legate/routes.yaml';
  const mountOf = (volume: Volume): VolumeMount =>
    only(
      (legate.volumeMounts ?? []).filter((m) => m.name === volume.name),
      `legate mounts volume ${volume.name}`,
    );
  const configVolume = only(
    (pod.volumes ?? []).filter((v) => v.configMap !== undefined),
    'one ConfigMap volume',
  );
  const configMap = only(
    all.filter((x) => x.m.kind === 'ConfigMap' && x.m.metadata?.name === configVolume.configMap?.name),
    `the ConfigMap ${configVolume.configMap?.name ?? '?'} is in deploy/kubernetes`,
  ).m;
  const routesText = configMap.data?.[path.posix.basename(configFile)];
  const secretVolume = only(
    (pod.volumes ?? []).filter((v) => v.secret !== undefined),
    'one Secret volume',
  );

  it('parses every manifest, each with apiVersion and kind', () => {
    expect(files.length).toBeGreaterThanOrEqual(4);
    for (const { file, m } of all) {
      expect(typeof m.apiVersion, path.relative(root, file)).toBe('string');
      expect(typeof m.kind, path.relative(root, file)).toBe('string');
    }
  });

  it('kustomizations list only files that exist, and set the legate image', () => {
    const kustomizations = all.filter((x) => x.m.kind === 'Kustomization' || x.m.kind === 'Component');
    expect(kustomizations.length).toBeGreaterThanOrEqual(1);
    for (const { file, m } of kustomizations) {
      for (const entry of [...(m.resources ?? []), ...(m.components ?? [])]) {
        expect(existsSync(path.join(path.dirname(file), entry)), `${path.relative(root, file)}: ${entry}`).toBe(true);
      }
    }
    const top = only(
      all.filter((x) => x.file === path.join(k8sDir, 'kustomization.yaml')),
      'deploy/kubernetes/kustomization.yaml',
    ).m;
    expect(top.resources).toEqual(expect.arrayContaining(['deployment.yaml', 'configmap.yaml']));
    expect(top.images?.some((i) => i.name === legate.image)).toBe(true);
  });

  it('runs legate as a native sidecar: an init container with restartPolicy Always', () => {
    expect(legate.restartPolicy).toBe('Always');
    expect(pod.containers.some((c) => c.name === 'legate')).toBe(false);
    expect(pod.containers.length).toBeGreaterThanOrEqual(1);
  });

  it('has startup, readiness and liveness probes on the admin port', () => {
    expect(legate.startupProbe?.httpGet?.path).toBe('/readyz');
    expect(legate.readinessProbe?.httpGet?.path).toBe('/readyz');
    expect(legate.livenessProbe?.httpGet?.path).toBe('/healthz');
    for (const probe of [legate.startupProbe, legate.readinessProbe, legate.livenessProbe]) {
      expect(probePort(probe)).toBe(15000);
    }
  });

  it.skipIf(!hasOpenssl)('binds the admin listener where kubelet probes reach it, the proxy to loopback only', () => {
    const { admin, listen } = routesConfig();
    expect(probePort(legate.readinessProbe)).toBe(admin.port);
    // kubelet connects to the pod IP: an admin listener on loopback would fail every probe.
    expect(isLoopback(admin.host)).toBe(false);
    expect(isLoopback(listen.host)).toBe(true);
  });

  it("keeps the image's Node flags in its NODE_OPTIONS, with a heap cap under the memory limit", () => {
    const options = (only((legate.env ?? []).filter((e) => e.name === 'NODE_OPTIONS'), 'NODE_OPTIONS in legate env').value ?? '')
      .split(/\s+/)
      .filter(Boolean);
    // A pod's NODE_OPTIONS replaces the image's: without --max-semi-space-size, Node would size V8's
    // young generation from the container's memory limit (docs/benchmarks.md "Memory").
    expect(options).toEqual(expect.arrayContaining(imageNodeOptions()));
    const capMi = Number(flagValue(options, '--max-old-space-size'));
    const limitMi = Number(/^(\d+)Mi$/.exec(legate.resources?.limits?.memory ?? '')?.[1]);
    expect(capMi).toBeGreaterThan(0);
    expect(capMi).toBeLessThan(limitMi);
  });

  it('sets resource requests and limits', () => {
    for (const kind of ['requests', 'limits'] as const) {
      expect(legate.resources?.[kind]?.cpu, `${kind}.cpu`).toMatch(/^\d+m?$/);
      expect(legate.resources?.[kind]?.memory, `${kind}.memory`).toMatch(/^\d+(Mi|Gi)$/);
    }
  });

  it('locks down the security context', () => {
    const sc = legate.securityContext ?? {};
    expect(sc.runAsNonRoot ?? pod.securityContext?.runAsNonRoot).toBe(true);
    expect(sc.runAsUser ?? pod.securityContext?.runAsUser).toBeGreaterThan(0);
    expect(sc.readOnlyRootFilesystem).toBe(true);
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.capabilities?.drop).toContain('ALL');
    expect(sc.capabilities?.add ?? []).toEqual([]);
    expect(sc.privileged ?? false).toBe(false);
  });

  it('mounts routes.yaml from the ConfigMap and certificates from the Secret as directories', () => {
    expect(routesText, `ConfigMap ${configMap.metadata?.name ?? '?'} has ${path.posix.basename(configFile)}`).toBeDefined();
    // subPath mounts never see updates: no hot reload, no certificate rotation.
    const config = mountOf(configVolume);
    expect(config.subPath).toBeUndefined();
    expect(config.readOnly).toBe(true);
    expect(config.mountPath).toBe(path.posix.dirname(configFile));
    expect(configVolume.configMap?.items).toBeUndefined();

    const secret = mountOf(secretVolume);
    expect(secret.subPath).toBeUndefined();
    expect(secret.readOnly).toBe(true);
    // Readable by the container's group only (0440 = 288), never world-readable.
    expect((secretVolume.secret?.defaultMode ?? 0o644) & 0o007).toBe(0);

    const files = tlsFiles(routesText ?? '');
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      expect(path.posix.dirname(f), `${f} comes from the Secret mount`).toBe(secret.mountPath);
    }
    expect(files.map((f) => path.posix.basename(f)).sort()).toEqual(['ca.crt', 'tls.crt', 'tls.key']);
  });

  it.skipIf(!hasOpenssl)('gives the pod a grace period longer than legate’s drainTimeout', () => {
    const drainSeconds = routesConfig().drainTimeoutMs / 1000;
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(drainSeconds + 5);
  });

  it.skipIf(!hasOpenssl)('points the app at legate over loopback', () => {
    const { listen } = routesConfig();
    const values = pod.containers.flatMap((c) => (c.env ?? []).map((e) => e.value ?? ''));
    expect(values.some((v) => new RegExp(`^http://(localhost|127\\.0\\.0\\.1):${listen.port}(/|$)`).test(v))).toBe(true);
  });

  it.skipIf(!hasOpenssl)('has a routes.yaml in the ConfigMap that legate accepts', () => {
    const result = load(withTestCerts(), configFile);
    expect(result.ok ? [] : result.issues).toEqual([]);
    expect(result.ok && result.config.routes.length).toBeGreaterThan(0);
  });

  it('without the certificates, its only problems are the certificate files', () => {
    const result = load(routesText ?? '', configFile);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    for (const issue of result.issues) expect(issue.path).toMatch(/\.tls\.(ca|cert|key)$/);
  });

  /** The ConfigMap's routes.yaml with the Secret's mount path pointing at the generated certificates. */
  function withTestCerts(): string {
    if (certs === undefined) throw new Error('no test certificates (openssl missing)');
    return rebase(routesText ?? '', mountOf(secretVolume).mountPath, certs.legate);
  }

  function routesConfig(): LegateConfig {
    return mustLoad(withTestCerts(), configFile);
  }

  function probePort(probe: Probe | undefined): number | undefined {
    const port = probe?.httpGet?.port;
    if (typeof port === 'number') return port;
    return legate.ports?.find((p) => p.name === port)?.containerPort;
  }
});

// -------------------------------------------------------- docker-compose ----

describe('docker-compose.yml', () => {
  const compose = parse(read('docker-compose.yml')) as ComposeFile;
  const legate = compose.services.legate as ComposeService;
  const commandArgs = Array.isArray(legate.command) ? legate.command : [];
  const configFile = configArg(commandArgs) ?? '/etc/legate/routes.yaml';
  /** `source:target[:mode]` of legate's volumes. */
  const mounts = (legate.volumes ?? []).map((v) => {
    const [source = '', target = '', mode = 'rw'] = v.split(':');
    return { source, target, mode };
  });
  const configMount = only(
    mounts.filter((m) => m.target === path.posix.dirname(configFile)),
    `a mount at ${path.posix.dirname(configFile)}`,
  );
  const routesPath = path.join(root, configMount.source, path.posix.basename(configFile));
  const routesText = readFileSync(routesPath, 'utf8');

  it('has app, legate sharing its network namespace, payments and certs', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['app', 'certs', 'legate', 'payments']);
    expect(compose.version).toBeUndefined();
    expect(legate.network_mode).toBe('service:app');
    // With network_mode: service:app, ports are published on app; legate may have none.
    expect(legate.ports).toBeUndefined();
    expect(legate.networks).toBeUndefined();
    expect(legate.build).toBeDefined();
  });

  it('mounts the routes folder and certificates read-only, from a named volume', () => {
    expect(configMount.source.startsWith('./')).toBe(true);
    expect(configMount.mode).toBe('ro');
    const files = tlsFiles(routesText);
    expect(files.length).toBeGreaterThan(0);
    const certMounts = new Set(files.map((f) => path.posix.dirname(f)));
    for (const dir of certMounts) {
      const m = only(
        mounts.filter((x) => x.target === dir),
        `a mount at ${dir}`,
      );
      expect(m.mode).toBe('ro');
      expect(Object.keys(compose.volumes ?? {})).toContain(m.source);
    }
  });

  it('starts legate after the certificates exist and the app is up', () => {
    const deps = legate.depends_on;
    expect(deps !== undefined && !Array.isArray(deps)).toBe(true);
    if (deps === undefined || Array.isArray(deps)) return;
    expect(deps.certs?.condition).toBe('service_completed_successfully');
    expect(Object.keys(deps)).toContain('app');
  });

  it('has a payments service that requires client certificates', () => {
    const source = read('deploy/compose/payments.mjs');
    expect(source).toMatch(/requestCert:\s*true/);
    expect(source).toMatch(/rejectUnauthorized:\s*true/);
    expect(compose.services.app?.environment?.BASE_URL).toBe('http://localhost:15001');
  });

  it.skipIf(!hasOpenssl)('has a routes.yaml that legate accepts, with mTLS to https://payments:8443', () => {
    const dir = path.posix.dirname(tlsFiles(routesText)[0] ?? '');
    const config = mustLoad(rebase(routesText, dir, certs?.legate ?? ''), configFile);
    const payments = config.routes.find((r) => r.name === 'payments');
    expect(payments?.match.pathPrefix).toBe('/payments');
    expect(JSON.stringify(payments?.upstream)).toContain('https://payments:8443');
    expect(JSON.stringify(payments?.upstream)).toContain('"serverName":"payments"');
    expect(isLoopback(config.listen.host)).toBe(true);
  });

  it.skipIf(!hasCompose)('passes docker-compose config', () => {
    const run = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config', '-q'], { cwd: root, encoding: 'utf8' });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
  });
});

// ------------------------------------------------------------ Dockerfile ----

describe('Dockerfile', () => {
  const dockerfile = read('Dockerfile');
  const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
  const entrypoint = JSON.parse(/^ENTRYPOINT (\[.*\])$/m.exec(runtime)?.[1] ?? '[]') as string[];

  it('builds in a separate stage; runs production dependencies only, as a numeric non-root user', () => {
    expect(dockerfile.match(/^FROM /gm)?.length).toBeGreaterThanOrEqual(2);
    expect(runtime).toMatch(/npm ci --omit=dev --ignore-scripts/);
    expect(runtime).toMatch(/^USER [1-9]\d*(:\d+)?$/m);
    expect(runtime).toMatch(/^HEALTHCHECK .*\/healthz/ms);
    expect(runtime).toMatch(/^EXPOSE 15001 15000$/m);
    expect(runtime).toMatch(/^STOPSIGNAL SIGTERM$/m);
    expect(entrypoint[0]).toBe('node');
    expect(entrypoint.at(-1)).toBe('/app/dist/cli.js');
  });

  it('starts node with flags this Node accepts', () => {
    // A V8 flag a Node release drops would stop the container at start: CI runs this on Node 20 and 24.
    const flags = entrypoint.slice(1, -1);
    expect(flags).toContain('--no-maglev');
    const run = spawnSync(process.execPath, [...flags, '-e', 'process.exit(0)'], {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: imageNodeOptions().join(' ') },
    });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
  });

  it("pins V8's young generation in NODE_OPTIONS, whatever memory the machine or container has", () => {
    const options = imageNodeOptions();
    const semiMiB = Number(flagValue(options, '--max-semi-space-size'));
    expect(semiMiB).toBeGreaterThan(0);
    // A burst of short-lived objects grows the young generation to its cap, two semi-spaces. Unpinned, this
    // machine's Node would take 32 MiB (Node 20) or 128 MiB (Node 24), a 128Mi container 2 or 3.5 MiB.
    const burst = [
      "const v8 = require('node:v8');",
      'let keep = [];',
      'for (let i = 0; i < 3e6; i++) { keep.push({ i }); if (keep.length > 2e5) keep = []; }',
      "process.stdout.write(String(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size));",
    ].join('\n');
    const run = spawnSync(process.execPath, ['-e', burst], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: options.join(' ') } });
    expect(run.status, run.stderr).toBe(0);
    expect(Number(run.stdout)).toBe(2 * semiMiB * 2 ** 20);
  });

  it.runIf(existsSync('/proc/self/task'))("gives V8 one helper thread, not Node's default four", () => {
    // A sidecar gets a core or less: docs/benchmarks.md "Memory" has what the three spare threads cost.
    const threads = (flags: string[]): number => {
      const run = spawnSync(process.execPath, [...flags, '-p', "require('node:fs').readdirSync('/proc/self/task').length"], {
        encoding: 'utf8',
        env: { ...process.env, NODE_OPTIONS: '' },
      });
      expect(run.status, run.stderr).toBe(0);
      return Number(run.stdout.trim());
    };
    expect(entrypoint).toContain('--v8-pool-size=1');
    expect(threads([])).toBe(threads(entrypoint.slice(1, -1)) + 3);
  });

  it('uses the same config path as docker-compose and the Deployment', () => {
    const cmd = /^CMD (\[.*\])$/m.exec(runtime)?.[1];
    expect(configArg(JSON.parse(cmd ?? '[]') as string[])).toBe('/etc/legate/routes.yaml');
  });

  it('keeps local state out of the build context', () => {
    const ignore = read('.dockerignore');
    for (const entry of ['node_modules', 'dist', '.git', 'bench/results', 'test']) {
      expect(ignore).toMatch(new RegExp(`^(\\*\\*/)?${entry.replace('.', '\\.')}/?$`, 'm'));
    }
  });
});
