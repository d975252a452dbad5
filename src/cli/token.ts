/**
 * `berth token hash` and `berth token new`: the bearer tokens of `control.tokens`. Only a token's
 * SHA-256 goes into the config; the token itself is given to its user (BERTH_TOKEN) and kept nowhere.
 */
import { randomBytes } from 'node:crypto';
import { hashToken } from '../api/auth.ts';
import { parse, UsageError } from './options.ts';

export const TOKEN_USAGE = 'berth token hash < token-file | berth token new [--json]';

/** Random bytes in a new token: 256 bits, printed as 43 base64url characters. */
const TOKEN_BYTES = 32;

/** Reads all of stdin as text. */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/** A token as sent in `Authorization: Bearer <token>`: one word of printable characters. */
function checkToken(token: string): string {
  if (token === '') throw new UsageError('expected a token on stdin, got nothing');
  if (!/^[\x21-\x7e]+$/.test(token)) throw new UsageError('a token must be one word of printable ASCII characters (no spaces)');
  return token;
}

export async function token(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean', default: false } }, true);
  const [sub, ...rest] = positionals;
  if (rest.length > 0) throw new UsageError(`unexpected argument "${rest[0]}"`);
  if (sub === 'hash') {
    if (process.stdin.isTTY) process.stderr.write('paste the token, then press Ctrl-D\n');
    // One trailing newline is the file's or the terminal's, not the token's.
    const text = checkToken((await readStdin()).replace(/\r?\n$/, ''));
    const hash = hashToken(text);
    process.stdout.write(values.json ? JSON.stringify({ hash }) + '\n' : hash + '\n');
    return 0;
  }
  if (sub === 'new') {
    const value = randomBytes(TOKEN_BYTES).toString('base64url');
    const hash = hashToken(value);
    if (values.json) {
      process.stdout.write(JSON.stringify({ token: value, hash }) + '\n');
      return 0;
    }
    process.stdout.write(
      [
        `token: ${value}`,
        `hash:  ${hash}`,
        '',
        'Give the token to its user (BERTH_TOKEN); it is not stored anywhere. In berth.yaml:',
        '  control:',
        '    tokens:',
        `      <user>: { hash: "${hash}", roles: [deployer] }`,
      ].join('\n') + '\n',
    );
    return 0;
  }
  throw new UsageError(sub === undefined ? 'expected "hash" or "new"' : `unknown token command "${sub}" (expected "hash" or "new")`);
}
