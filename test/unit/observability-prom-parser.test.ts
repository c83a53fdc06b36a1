/**
 * The test helper that reads /metrics must itself be strict, or the e2e
 * scrapes prove nothing: it accepts the exposition format and rejects what
 * Prometheus would.
 */
import { describe, expect, it } from 'vitest';
import { parsePrometheusText, sampleValue } from '../helpers/prom.js';

const GOOD = `# HELP http_requests_total Requests, with "quotes" and a \\\\ backslash.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400",} 3
# a plain comment
# TYPE latency histogram
latency_bucket{le="0.05"} 24054
latency_bucket{le="0.1"} 33444
latency_bucket{le="+Inf"} 144320
latency_sum 53423
latency_count 144320
# TYPE rpc summary
rpc{quantile="0.5"} 4773
rpc_sum 1.7560473e+07
rpc_count 2693
escaped{path="a\\"b\\\\c\\nd"} NaN
temperature -Inf
`;

describe('parsePrometheusText', () => {
  it('reads families, types, help, labels, escapes, special values and timestamps', () => {
    const f = parsePrometheusText(GOOD);
    expect([...f.keys()]).toEqual(['http_requests_total', 'latency', 'rpc', 'escaped', 'temperature']);
    expect(f.get('http_requests_total')).toMatchObject({ type: 'counter', help: 'Requests, with "quotes" and a \\ backslash.' });
    expect(f.get('http_requests_total')?.samples[0]).toEqual({ name: 'http_requests_total', labels: { method: 'post', code: '200' }, value: 1027, timestamp: 1395066363000 });
    expect(sampleValue(f, 'http_requests_total', { code: '400', method: 'post' })).toBe(3);
    expect(f.get('latency')?.samples).toHaveLength(5);
    expect(sampleValue(f, 'rpc_sum')).toBe(17560473);
    expect(f.get('escaped')?.samples[0]?.labels.path).toBe('a"b\\c\nd');
    expect(Number.isNaN(sampleValue(f, 'escaped', { path: 'a"b\\c\nd' }))).toBe(true);
    expect(sampleValue(f, 'temperature')).toBe(-Infinity);
    expect(f.get('temperature')?.type).toBe('untyped');
  });

  it.each([
    ['no final newline', 'a 1', /last line/],
    ['a bad metric name', '1a 1\n', /not a sample/],
    ['a bad label name', 'a{1x="y"} 1\n', /bad label name/],
    ['a reserved label name', 'a{__name__="y"} 1\n', /reserved/],
    ['a label given twice', 'a{x="1",x="2"} 1\n', /given twice/],
    ['an unquoted label value', 'a{x=1} 1\n', /expected "/],
    ['an unterminated label value', 'a{x="1} 1\n', /unterminated/],
    ['a bad escape', 'a{x="\\t"} 1\n', /bad escape/],
    ['a missing value', 'a{x="1"}\n', /value \[timestamp\]/],
    ['a value that is not a number', 'a 1,5\n', /not a number/],
    ['a bad timestamp', 'a 1 1.5\n', /bad timestamp/],
    ['junk after the timestamp', 'a 1 2 3\n', /value \[timestamp\]/],
    ['an unknown type', '# TYPE a countr\na 1\n', /unknown type/],
    ['a TYPE after the samples', 'a 1\n# TYPE a counter\n', /after its samples/],
    ['a second TYPE', '# TYPE a counter\n# TYPE a counter\na 1\n', /second TYPE/],
    ['a family in two groups', 'a 1\nb 1\na{x="y"} 2\n', /not in one group/],
    ['a duplicate series', 'a{x="1",y="2"} 1\na{y="2",x="1"} 2\n', /duplicate series/],
    ['a negative counter', '# TYPE a_total counter\na_total -1\n', /counter a_total is -1/],
    ['a bucket without le', '# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n', /without an le/],
    ['buckets not cumulative', '# TYPE h histogram\nh_bucket{le="1"} 5\nh_bucket{le="+Inf"} 4\nh_sum 1\nh_count 4\n', /not cumulative/],
    ['bucket bounds not increasing', '# TYPE h histogram\nh_bucket{le="2"} 1\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', /not increasing/],
    ['no +Inf bucket', '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', /no le=/],
    ['+Inf differing from _count', '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n', /differs from _count/],
    ['a histogram without _sum', '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 2\n', /_sum or _count missing/],
    ['a summary sample without quantile', '# TYPE s summary\ns 1\ns_sum 1\ns_count 1\n', /without a quantile/],
  ])('rejects %s', (_what, text, reason) => {
    expect(() => parsePrometheusText(text)).toThrow(reason);
  });
});
