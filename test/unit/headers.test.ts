import { describe, expect, it } from 'vitest';
import { appRequestId, downstreamResponseHeaders, upstreamRequestHeaders } from '../../src/proxy/headers.js';

describe('upstreamRequestHeaders', () => {
  it('drops hop-by-hop, Connection-named, proxy-* and control headers; sets Host and x-request-id', () => {
    const out = upstreamRequestHeaders(
      {
        connection: 'keep-alive, x-secret-hop',
        'x-secret-hop': '1',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        trailer: 'x',
        'transfer-encoding': 'chunked',
        upgrade: 'websocket',
        'proxy-authorization': 'Basic x',
        'proxy-connection': 'keep-alive',
        expect: '100-continue',
        'x-legate-max-retries': '3',
        'x-envoy-max-retries': '3',
        'x-envoy-upstream-rq-timeout-ms': '10',
        host: 'localhost:15001',
        'x-request-id': 'old',
        traceparent: '00-abc-def-01',
        tracestate: 'k=v',
        authorization: 'Bearer t',
        'content-length': '5',
      },
      'payments.internal:8443',
      'rid',
    );
    expect(out).toEqual({
      host: 'payments.internal:8443',
      'x-request-id': 'rid',
      traceparent: '00-abc-def-01',
      tracestate: 'k=v',
      authorization: 'Bearer t',
      'content-length': '5',
    });
  });
});

describe('downstreamResponseHeaders', () => {
  it('drops hop-by-hop headers and keeps repeated set-cookie', () => {
    const out = downstreamResponseHeaders({
      connection: 'close, x-hop',
      'x-hop': '1',
      'transfer-encoding': 'chunked',
      'set-cookie': ['a=1', 'b=2'],
      'content-type': 'text/plain',
    });
    expect(out).toEqual({ 'set-cookie': ['a=1', 'b=2'], 'content-type': 'text/plain' });
  });
});

describe('appRequestId', () => {
  it.each([
    ['abc-123', 'abc-123'],
    [undefined, undefined],
    ['has space', undefined],
    ['x'.repeat(201), undefined],
    [['first', 'second'], 'first'],
  ])('%j → %j', (input, want) => {
    expect(appRequestId(input as string | string[] | undefined)).toBe(want);
  });
});
