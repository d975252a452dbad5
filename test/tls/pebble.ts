/**
 * A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` answering its DNS so that
 * every test host name resolves to 127.0.0.1, where the test's own HTTP and TLS servers answer the
 * challenges on the ports pebble is told to validate against. Everything listens on 127.0.0.1 only.
 *
 * Pebble is started with PEBBLE_VA_NOSLEEP (no random validation delay), no nonce rejections, and no
 * authorization reuse (so every order validates again: a broken challenge answer must fail a renewal).
 * PEBBLE_VA_ALWAYS_VALID is never set: every validation is real.
 */
import type { TestContext } from 'node:test';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { createCa, issueCertificate } from '../helpers/certificates.ts';

export const PEBBLE = '/usr/bin/pebble';
export const CHALLTESTSRV = '/usr/bin/pebble-challtestsrv';

/** Why the ACME tests cannot run here, or null. Under CI they must run: CI installs pebble. */
export function pebbleMissing(): string | null {
  if (existsSync(PEBBLE) && existsSync(CHALLTESTSRV)) return null;
  return `pebble is not installed (${PEBBLE}, ${CHALLTESTSRV}): apt-get install -y pebble`;
}

export interface PebbleOptions {
  /** Where pebble's files go. */
  dir: string;
  /** The ports pebble validates HTTP-01 and TLS-ALPN-01 on (the test's challenge servers). */
  httpPort: number;
  tlsPort: number;
  /** Lifetime of the certificates it issues, in seconds (pebble's default is five years). */
  validitySeconds?: number;
}

export interface Pebble {
  directoryUrl: string;
  /** PEM of the CA behind pebble's own HTTPS (the directory), for `caRoot`. */
  caRoot: string;
  /** PEM of the root that signs the certificates it issues (new on every start). */
  issuingRoot(): Promise<string>;
  /** pebble-challtestsrv's management API (`/add-a`, `/clear-a`): what a test host name resolves to. */
  dnsManagementUrl: string;
}

/** A free TCP port on 127.0.0.1 (closed again: the caller binds it next). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts challtestsrv and pebble; both are stopped when `t` ends. */
export async function startPebble(t: TestContext, opts: PebbleOptions): Promise<Pebble> {
  const ca = await createCa(join(opts.dir, 'pebble-ca'), 'pebble test CA');
  const leaf = await issueCertificate(ca, ['localhost']);
  const [dnsPort, dnsMgmtPort, port, mgmtPort] = [await freePort(), await freePort(), await freePort(), await freePort()];

  spawnDaemon(t, CHALLTESTSRV, [
    '-defaultIPv4', '127.0.0.1', '-defaultIPv6', '',
    '-dns01', `127.0.0.1:${dnsPort}`, '-http01', '', '-https01', '', '-tlsalpn01', '',
    '-management', `127.0.0.1:${dnsMgmtPort}`,
  ], {});

  const config = join(opts.dir, 'pebble-config.json');
  await writeFile(config, JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${port}`,
      managementListenAddress: `127.0.0.1:${mgmtPort}`,
      certificate: leaf.certificate,
      privateKey: leaf.key,
      httpPort: opts.httpPort,
      tlsPort: opts.tlsPort,
      ocspResponderURL: '',
      externalAccountBindingRequired: false,
      ...(opts.validitySeconds ? { certificateValidityPeriod: opts.validitySeconds } : {}),
    },
  }));
  spawnDaemon(t, PEBBLE, ['-config', config, '-dnsserver', `127.0.0.1:${dnsPort}`], {
    PEBBLE_VA_NOSLEEP: '1',
    PEBBLE_WFE_NONCEREJECT: '0',
    PEBBLE_AUTHZREUSE: '0',
  });

  const directoryUrl = `https://localhost:${port}/dir`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await get(directoryUrl, ca.pem);
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`pebble did not answer at ${directoryUrl}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { directoryUrl, caRoot: ca.pem, issuingRoot: () => get(`https://localhost:${mgmtPort}/roots/0`, ca.pem), dnsManagementUrl: `http://127.0.0.1:${dnsMgmtPort}` };
}

function spawnDaemon(t: TestContext, bin: string, args: string[], env: Record<string, string>): ChildProcess {
  const child = spawn(bin, args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-20_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  child.on('exit', (code, signal) => {
    if (!stopping && code !== 0) process.stderr.write(`${bin} exited (${code ?? signal}):\n${output}\n`);
  });
  let stopping = false;
  t.after(async () => {
    stopping = true;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  });
  return child;
}

function get(url: string, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ca, timeout: 2_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => {
        if (res.statusCode === 200) resolve(body);
        else reject(new Error(`${url} answered ${res.statusCode}`));
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout'))).on('error', reject).end();
  });
}
