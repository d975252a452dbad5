import type { RoutingTable } from '../proxy/router.ts';
import { CLIENT_OPTIONS, clientFor, parse } from './options.ts';
import { formatTable } from './table.ts';

export const ROUTES_USAGE = 'berth routes [--json] [--socket PATH | --config F]';

/** `berth routes`: host, path, target and mode of every route the gateway serves. */
export async function routes(args: string[]): Promise<number> {
  const { values } = parse(args, CLIENT_OPTIONS);
  const client = await clientFor(values);
  const { routes } = await client.call<{ routes: ReturnType<RoutingTable['describe']> }>('GET', '/v1/routes');
  if (values.json) process.stdout.write(JSON.stringify({ routes }, null, 2) + '\n');
  else process.stdout.write(formatTable(['host', 'path', 'target', 'app', 'mode'], routes.map((r) => [r.host, r.path, r.target, r.app, r.mode])) + '\n');
  return 0;
}
