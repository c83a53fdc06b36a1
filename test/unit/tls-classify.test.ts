import { describe, expect, it } from 'vitest';
import { classifyUpstreamFailure } from '../../src/errors.js';
import { attachTlsFacts, TLS_MATERIAL_ERROR_CODE, type TlsFacts } from '../../src/tls/tls-facts.js';

const EP = 'payments.internal:8443';

function facts(over: Partial<TlsFacts> = {}): TlsFacts {
  return {
    caFile: '/etc/legate/ca.pem',
    clientSubject: 'CN=client-a',
    expectedName: 'payments.internal',
    minVersion: undefined,
    handshakeDone: true,
    secureConnected: true,
    clientCertRequested: true,
    exchanges: 1,
    protocol: 'TLSv1.3',
    peer: {
      subject: 'CN=payments.internal',
      issuer: 'CN=Some Other CA',
      validFrom: 'Jan  1 00:00:00 2020 GMT',
      validTo: 'Jan  1 00:00:00 2021 GMT',
      subjectAltName: 'DNS:payments.internal',
    },
    ...over,
  };
}

function error(code: string, message = code, extra: Record<string, unknown> = {}, f?: TlsFacts): Error {
  const e = Object.assign(new Error(message), { code, ...extra });
  if (f !== undefined) attachTlsFacts(e, f);
  return e;
}

describe('classifyUpstreamFailure: our verification of the server', () => {
  it.each([
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', facts(), /unknown CA: .*CN=payments\.internal, issued by CN=Some Other CA; trusted: \/etc\/legate\/ca\.pem/],
    ['UNABLE_TO_GET_ISSUER_CERT_LOCALLY', facts({ caFile: undefined }), /unknown CA: .*trusted: the system CA store/],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', facts(), /unknown CA: .*self-signed/],
    ['SELF_SIGNED_CERT_IN_CHAIN', facts(), /unknown CA: /],
    ['CERT_HAS_EXPIRED', facts(), /expired: the server certificate has expired \(CN=payments\.internal, notAfter Jan {2}1 00:00:00 2021 GMT\)/],
    ['CERT_NOT_YET_VALID', facts(), /not yet valid: .*notBefore Jan {2}1 00:00:00 2020 GMT/],
  ])('%s → upstream-tls-failure with the reason', (code, f, message) => {
    const e = classifyUpstreamFailure(error(code, `certificate problem ${code}`, {}, f), EP);
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.status).toBe(502);
    expect(e.message).toMatch(new RegExp(`^TLS handshake with ${EP} failed: `));
    expect(e.message).toMatch(message);
  });

  it('hostname mismatch names the expected name and the names in the certificate', () => {
    const err = error('ERR_TLS_CERT_ALTNAME_INVALID', "Hostname/IP does not match certificate's altnames", {
      cert: { subjectaltname: 'DNS:localhost, IP Address:127.0.0.1' },
    }, facts({ expectedName: 'wrong.example' }));
    const e = classifyUpstreamFailure(err, EP, 'ignored-when-facts-say');
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.message).toContain('hostname mismatch: the server certificate is not valid for wrong.example (it names DNS:localhost, IP Address:127.0.0.1)');
  });

  it('without facts the serverName argument names the expected host', () => {
    const e = classifyUpstreamFailure(error('ERR_TLS_CERT_ALTNAME_INVALID'), EP, 'payments.internal');
    expect(e.message).toContain('not valid for payments.internal');
  });
});

describe('classifyUpstreamFailure: the server refusing our client certificate', () => {
  it.each([
    ['ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', /client certificate refused: the server requires a client certificate and none was presented/],
    ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', /client certificate refused: the server does not trust the CA .*; presented CN=client-a/],
    ['ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', /client certificate refused: .*bad certificate.*presented CN=client-a/],
    ['ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', /client certificate refused: the server says the client certificate has expired/],
  ])('alert %s', (code, message) => {
    const e = classifyUpstreamFailure(error(code, 'alert', {}, facts()), EP);
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.message).toMatch(message);
  });

  it.each([
    ['OpenSSL 3.0 (Node 20)', 'sslv3 alert handshake failure'],
    ['OpenSSL 3.5 (Node 24)', 'ssl/tls alert handshake failure'],
  ])('an alert that arrives as EPROTO on a write is read from the OpenSSL message: %s', (_openssl, alert) => {
    const msg = `write EPROTO 802C:error:0A000410:SSL routines:ssl3_read_bytes:${alert}:../ssl/record/rec_layer_s3.c:1601:SSL alert number 40\n`;
    const none = classifyUpstreamFailure(error('EPROTO', msg, {}, facts({ clientSubject: undefined, handshakeDone: false })), EP);
    expect(none.code).toBe('upstream-tls-failure');
    expect(none.message).toMatch(/client certificate refused: .*handshake failure.*none is configured/);
    const some = classifyUpstreamFailure(error('EPROTO', msg, {}, facts({ handshakeDone: false })), EP);
    expect(some.code).toBe('upstream-tls-failure');
    expect(some.message).toMatch(/handshake failure alert.*presented CN=client-a/);
  });

  // TLS 1.3: the client is done before the server judges its certificate, so a refusal can surface as a
  // reset or a hang-up on the first read, with no alert read.
  it.each([
    ['ECONNRESET', 'read ECONNRESET'],
    ['ECONNRESET', 'socket hang up'],
    ['EPIPE', 'write EPIPE'],
  ])('%s (%s) on the first exchange after the server asked for a certificate → client certificate refused', (code, message) => {
    const e = classifyUpstreamFailure(error(code, message, {}, facts()), EP);
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.message).toMatch(/client certificate refused: the server asked for a client certificate and closed the connection right after the handshake.*presented CN=client-a/);
  });

  it('the same before our handshake finished (TLS 1.2, a server that closes without an alert)', () => {
    const err = error('ECONNRESET', 'Client network socket disconnected before secure TLS connection was established', {}, facts({ handshakeDone: false, secureConnected: false }));
    const e = classifyUpstreamFailure(err, EP);
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.message).toMatch(/client certificate refused: .*during the handshake/);
  });
});

describe('classifyUpstreamFailure: what stays a reset or a connect failure', () => {
  it('a reset on a reused keep-alive connection is a reset, even towards an mTLS server', () => {
    expect(classifyUpstreamFailure(error('ECONNRESET', 'read ECONNRESET', {}, facts({ exchanges: 2 })), EP).code).toBe('upstream-reset');
  });

  it('a reset after a handshake where no client certificate was asked for is a reset', () => {
    expect(classifyUpstreamFailure(error('ECONNRESET', 'socket hang up', {}, facts({ clientCertRequested: false })), EP).code).toBe('upstream-reset');
  });

  it('a reset without TLS facts (plain http) is a reset', () => {
    expect(classifyUpstreamFailure(error('ECONNRESET', 'socket hang up'), EP).code).toBe('upstream-reset');
  });

  it('a connection closed during the handshake is a TLS failure', () => {
    const err = error('ECONNRESET', 'Client network socket disconnected', {}, facts({ handshakeDone: false, clientCertRequested: undefined }));
    const e = classifyUpstreamFailure(err, EP);
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.message).toContain('closed the connection during the TLS handshake');
  });

  it('a refused connection is a connect failure whatever the TLS facts', () => {
    expect(classifyUpstreamFailure(error('ECONNREFUSED', 'connect ECONNREFUSED', {}, facts({ handshakeDone: false })), EP).code).toBe(
      'upstream-connect-failure',
    );
  });
});

describe('classifyUpstreamFailure: other TLS failures', () => {
  it('unusable TLS files say that TLS was not attempted and why', () => {
    const e = classifyUpstreamFailure(error(TLS_MATERIAL_ERROR_CODE, 'cannot read /etc/legate/client.pem: ENOENT'), EP);
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.message).toBe(`TLS to ${EP} not attempted: cannot read /etc/legate/client.pem: ENOENT`);
  });

  it('no common TLS version names the configured minVersion', () => {
    const e = classifyUpstreamFailure(error('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', 'alert', {}, facts({ minVersion: 'TLSv1.3' })), EP);
    expect(e.message).toMatch(/no TLS version in common with the server \(minVersion TLSv1\.3\)/);
  });

  it('a plain-HTTP port answered with TLS is named as such', () => {
    expect(classifyUpstreamFailure(error('ERR_SSL_WRONG_VERSION_NUMBER', 'x', {}, facts()), EP).message).toMatch(/did not answer in TLS/);
  });

  it('an unknown OpenSSL code still is a TLS failure, with its reason', () => {
    const e = classifyUpstreamFailure(error('ERR_SSL_SOMETHING_NEW', 'x', { reason: 'something new' }), EP);
    expect(e.code).toBe('upstream-tls-failure');
    expect(e.message).toMatch(/failed: something new$/);
  });

  it('the facts ride on a symbol: they never show up when an error is serialised', () => {
    const err = error('ECONNRESET', 'x', {}, facts());
    expect(JSON.stringify(err)).not.toContain('client-a');
    expect(Object.keys(err)).not.toContain('tlsFacts');
  });
});
