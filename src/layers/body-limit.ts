/**
 * `limits.maxRequestBody`. A known length over the limit is refused before
 * anything is sent. A body of unknown length (chunked) is counted as it
 * streams to the upstream, through a Transform on the stream the try sends
 * (never a bare 'data' listener, which would set the app's stream flowing
 * before anything consumes it); past the limit the request is aborted, and the
 * app gets 413 unless the response already started.
 */
import { Transform } from 'node:stream';
import { LegateError } from '../errors.js';
import type { Layer, ProxyRequest, RequestBody } from '../proxy/types.js';

function limitedBody(req: ProxyRequest, inner: RequestBody, limit: number, tooLarge: () => LegateError): RequestBody {
  let seen = 0;
  return {
    get replayable() {
      return inner.replayable;
    },
    get consumed() {
      return inner.consumed;
    },
    length: inner.length,
    open() {
      const source = inner.open();
      const counter = new Transform({
        transform(chunk: Buffer, _enc, done) {
          seen += chunk.length;
          if (seen > limit) {
            req.abort(tooLarge());
            done();
            return;
          }
          done(null, chunk);
        },
      });
      return source.pipe(counter);
    },
  };
}

const LIMITED = new WeakSet<RequestBody>();

/** Per try, after the retry layer buffered what it replays, so it counts the bytes actually sent. */
export function createBodyLimitLayer(): Layer {
  return (next) => (req) => {
    const limit = req.route.settings.limits.maxRequestBodyBytes;
    if (limit === 0 || req.body.length === 0 || LIMITED.has(req.body)) return next(req);
    const tooLarge = (): LegateError =>
      new LegateError('request-too-large', `request body is larger than ${limit} bytes, the limit of route ${req.route.name}`);
    if (req.body.length !== undefined) {
      return req.body.length > limit ? Promise.reject(tooLarge()) : next(req);
    }
    req.body = limitedBody(req, req.body, limit, tooLarge);
    LIMITED.add(req.body);
    return next(req);
  };
}
