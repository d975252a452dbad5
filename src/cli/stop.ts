import { stat } from 'node:fs/promises';
import { processAlive } from '../lib/process-alive.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const STOP_USAGE = 'berth stop [--timeout SECONDS] [--socket PATH | --url URL | --config F]';

/**
 * `berth stop`: asks the gateway to shut down gracefully and waits until it is gone (its control socket
 * disappears), so a script can rely on "no app process left" once this returns.
 */
export async function stop(args: string[]): Promise<number> {
  const { values } = parse(args, { ...CLIENT_OPTIONS, timeout: { type: 'string', default: '120' } });
  const timeout = Number(values.timeout);
  if (values.timeout.trim() === '' || !Number.isFinite(timeout) || timeout <= 0) throw new UsageError(`--timeout expects a positive number of seconds, got "${values.timeout}"`);
  const client = await clientFor(values);
  const { pid } = await client.call<{ pid: number }>('POST', '/v1/stop');
  if (!values.json) process.stdout.write(`stopping gateway (pid ${pid}): draining requests and stopping apps\n`);
  const deadline = Date.now() + timeout * 1000;
  while (Date.now() < deadline) {
    // Alive as another user too: a control.socket_group member may stop a gateway it does not own.
    const alive = processAlive(pid);
    // A remote gateway (--url) is gone when its control API stops answering; a local one by pid and socket.
    const gone = client.url ? await client.call('GET', '/v1/status').then(() => false, () => true) : !alive || !(await stat(client.socket).catch(() => null));
    if (gone) {
      if (values.json) process.stdout.write(JSON.stringify({ stopped: true, pid }) + '\n');
      else process.stdout.write('gateway stopped\n');
      return 0;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  process.stderr.write(`berth: the gateway (pid ${pid}) has not stopped after ${values.timeout}s\n`);
  return 1;
}
