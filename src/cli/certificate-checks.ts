/**
 * What `berth check` says about certificate files: with a TLS listener, every file the config names (an
 * app's `tls` files, `tls.directory`, `tls.default_certificate`) is loaded the strict way the gateway
 * loads it at start and on a config reload. A file that cannot be read, does not parse, has expired, or
 * whose key does not match is a problem naming its config key and path (exit 2), never a key's content.
 * What the gateway would serve but warn about (a host the certificate does not cover, a key every user
 * can read, a certificate not valid yet, Must-Staple) is a warning.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { BerthConfig } from '../config/schema.ts';
import { ConfigError, type ConfigProblem } from '../lib/errors.ts';
import { certificateInput } from '../tls/certificate-input.ts';
import { CertificateStore } from '../tls/certificate-store.ts';

/** pino's level number for `warn`. */
const WARN = 40;

export async function checkCertificates(config: BerthConfig): Promise<{ problems: ConfigProblem[]; warnings: string[] }> {
  if (!config.listen.some((a) => a.tls)) return { problems: [], warnings: [] };
  const warnings: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        const { level, msg, time: _time, pid: _pid, hostname: _host, ...fields } = JSON.parse(line) as Record<string, unknown>;
        if (typeof level === 'number' && level >= WARN) warnings.push(`${msg as string} (${Object.entries(fields).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(' ') : String(v)}`).join(', ')})`);
      }
      cb();
    },
  });
  const store = new CertificateStore(certificateInput(config), { logger: pino({ level: 'warn' }, sink), watch: false });
  try {
    await store.start();
  } catch (err) {
    if (err instanceof ConfigError) return { problems: err.problems, warnings };
    throw err;
  } finally {
    await store.stop();
  }
  return { problems: [], warnings };
}
