/**
 * The CLI's side of the control API: JSON requests over the control unix socket. Every verb except
 * `start` and `check` is a thin client of this.
 */
import { request } from 'node:http';
import { userInfo } from 'node:os';
import { BerthError, errorMessage } from '../lib/errors.ts';

/** The person running the CLI, for the audit log. */
export function cliUser(): string {
  try {
    return process.env.BERTH_USER ?? userInfo().username;
  } catch {
    return 'unknown';
  }
}

export class ControlClient {
  readonly socket: string;

  constructor(socket: string) {
    this.socket = socket;
  }

  /** Sends one request and returns the parsed JSON body; API errors are thrown as BerthError. */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socket,
          path,
          method,
          headers: {
            'x-berth-user': cliUser(),
            ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        },
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new BerthError('BERTH_E_UNAVAILABLE', `cannot reach the gateway on ${this.socket}: is it running? (start it with \`berth start\`)`, { cause: err }));
        } else reject(new BerthError('BERTH_E_UNAVAILABLE', `control API request failed: ${errorMessage(err)}`, { cause: err }));
      });
      req.end(payload);
    });
    let parsed: unknown;
    try {
      parsed = text === '' ? {} : JSON.parse(text);
    } catch {
      throw new BerthError('BERTH_E_INTERNAL', `the gateway answered ${status} with a body that is not JSON`);
    }
    if (status >= 400) {
      const e = (parsed as { error?: { code?: string; message?: string } }).error;
      throw new BerthError(e?.code ?? 'BERTH_E_INTERNAL', e?.message ?? `the gateway answered ${status}`);
    }
    return parsed as T;
  }
}
