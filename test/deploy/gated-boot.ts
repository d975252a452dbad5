/**
 * A release that gets healthy only when the test says so: its server.mjs waits for a gate file and then
 * runs the real server (app.mjs). Holds a deploy in wait_healthy for exactly as long as a test needs,
 * with no timing guess.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Turns the app in `src` into a gated one: its server.mjs moves to app.mjs and starts once `gate` exists. */
export async function gatedBoot(src: string, gate: string): Promise<void> {
  await writeFile(join(src, 'app.mjs'), await readFile(join(src, 'server.mjs')));
  await writeFile(
    join(src, 'server.mjs'),
    `import { existsSync } from 'node:fs';
const wait = () => (existsSync(${JSON.stringify(gate)}) ? import('./app.mjs') : setTimeout(wait, 50));
wait();
`,
  );
}
