/**
 * Request bodies for retries. Up to `retry.bufferLimit` the body is read
 * into memory once and replayed byte-identical on every try; past it the
 * body streams straight through and the request is not retried once sent
 * (linkerd2-proxy's rule: give up on retrying, never on the request).
 */
import type { IncomingMessage } from 'node:http';
import { PassThrough, Readable } from 'node:stream';
import { LegateError } from '../errors.js';
import type { AbortLike } from './abort.js';
import type { RequestBody } from './types.js';

/** A body held in memory: every `open()` is a fresh stream of the same bytes. */
export function bufferedBody(chunks: readonly Buffer[], length: number): RequestBody {
  return {
    replayable: true,
    consumed: false,
    length,
    open: () => Readable.from(chunks, { objectMode: false }),
  };
}

/**
 * Already-read chunks, then the rest of the app's stream: sendable once. A
 * stream of its own, fed by the app's: a try that fails destroys what it
 * sends, and the app's request must outlive that (legate still answers it).
 */
function prefixedBody(prefix: readonly Buffer[], rest: IncomingMessage): RequestBody {
  let opened = false;
  return {
    replayable: false,
    get consumed() {
      return opened;
    },
    length: undefined,
    open() {
      opened = true;
      const out = new PassThrough();
      for (const chunk of prefix) out.write(chunk);
      return rest.pipe(out);
    },
  };
}

/**
 * Reads the app's body for replay when it fits in `limit`. Resolves with the
 * body the tries should use; streams (unreplayable) past the limit. Rejects
 * when `signal` aborts (deadline, app gone) while reading.
 */
export async function bufferForReplay(raw: IncomingMessage, current: RequestBody, limit: number, signal: AbortLike): Promise<RequestBody> {
  if (current.length === 0 || current.consumed) return current;
  if (current.length !== undefined && current.length > limit) return current;
  const chunks: Buffer[] = [];
  let size = 0;
  return new Promise<RequestBody>((resolve, reject) => {
    const done = (): void => {
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('error', onError);
      raw.off('aborted', onAborted);
      signal.removeEventListener('abort', onAbort);
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      size += chunk.length;
      if (size > limit) {
        done();
        raw.pause();
        resolve(prefixedBody(chunks, raw));
      }
    };
    const onEnd = (): void => {
      done();
      resolve(bufferedBody(chunks, size));
    };
    const onError = (e: Error): void => {
      done();
      reject(new LegateError('bad-request', `reading the request body failed: ${e.message}`));
    };
    const onAborted = (): void => onError(new Error('the app closed the connection'));
    const onAbort = (): void => {
      done();
      reject(signal.reason as Error);
    };
    raw.on('data', onData);
    raw.on('end', onEnd);
    raw.on('error', onError);
    raw.on('aborted', onAborted);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
