/**
 * Certificates for the bench's mTLS targets, made with openssl for one run:
 * ca.pem, server.pem/server-key.pem and client.pem/client-key.pem in `dir`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run } from './procs.mjs';

/** A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all P-256, valid 2 days. */
export function makeCerts(dir) {
  mkdirSync(dir, { recursive: true });
  const o = (...args) => run('openssl', args, { cwd: dir });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  o('req', '-x509', ...ec, '-keyout', 'ca-key.pem', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=legate bench CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const leaves = [
    ['server', 'localhost', 'serverAuth', 'DNS:localhost,IP:127.0.0.1'],
    ['client', 'legate-bench-client', 'clientAuth', 'DNS:legate-bench-client'],
  ];
  for (const [name, cn, eku, san] of leaves) {
    o('req', ...ec, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    writeFileSync(path.join(dir, `${name}.ext`),
      `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=${eku}\nsubjectAltName=${san}\n`);
    o('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`);
  }
}
