/**
 * The local user at the other end of a TCP connection, read from the kernel's socket tables
 * (/proc/net/tcp and tcp6, Linux), as identd does.
 *
 * Why: the call-context header is trusted by address (`control.call_context_from`, loopback by default),
 * and every local user, an app's user included, can connect from loopback or from this host's own
 * addresses. When berth runs apps as their own users, their code must not be able to claim any identity
 * by sending the header; a connection owned by an app's user is then refused the call context, whatever
 * its address. Connections from other hosts are not in these tables, and are judged by address alone.
 *
 * A connection whose client socket is in the table but owned by no process (inode 0: it was closed
 * right after sending, and lingers in FIN_WAIT or TIME_WAIT) is reported as `orphan`: its owner cannot
 * be told, so the caller refuses it rather than read the uid 0 the kernel shows for it.
 */
import { readFile } from 'node:fs/promises';
import { isIPv4, isIPv6 } from 'node:net';
import { endianness } from 'node:os';

/** What the tables say about a connection's client end. */
export type LocalPeer =
  /** The client end belongs to `uid`. */
  | { kind: 'local'; uid: number }
  /** The client end is closed and owned by nobody; or the connection is gone, so its address is unknown. */
  | { kind: 'orphan' }
  /** Not in the tables: the client is on another host (or in another network namespace). */
  | { kind: 'remote' }
  /** No tables to read (not Linux): nothing can be told. */
  | { kind: 'unavailable' };

const TABLES = ['/proc/net/tcp', '/proc/net/tcp6'];

/** 16 bytes of an address as 32 hex digits; an IPv4 address as its IPv4-mapped IPv6 form. */
export function addressHex(address: string): string | null {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  const v4 = mapped ? mapped[1] : isIPv4(address) ? address : null;
  if (v4 !== null) return '00000000000000000000ffff' + v4.split('.').map((n) => Number(n).toString(16).padStart(2, '0')).join('');
  if (!isIPv6(address)) return null;
  let text = address.toLowerCase().replace(/%.*$/, '');
  // An embedded dotted quad (`::1.2.3.4`) becomes two hex groups.
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number);
    text = text.slice(0, dotted.index) + ((a << 8) | b).toString(16) + ':' + ((c << 8) | d).toString(16);
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, null];
  const left = head === '' ? [] : head.split(':');
  const right = tail === null || tail === '' ? [] : tail.split(':');
  const groups = tail === null ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right];
  if (groups.length !== 8) return null;
  return groups.map((g) => g.padStart(4, '0')).join('');
}

/** An address field of the tables (`0100007F:1F90`): address hex in our form, and the port. */
function tableEndpoint(field: string): { hex: string; port: number } | null {
  const colon = field.indexOf(':');
  if (colon < 0) return null;
  const raw = field.slice(0, colon);
  const port = parseInt(field.slice(colon + 1), 16);
  // The kernel prints each 32-bit word in host byte order.
  const word = (w: string) => (endianness() === 'LE' ? w.match(/../g)!.reverse().join('') : w).toLowerCase();
  if (raw.length === 8) return { hex: '00000000000000000000ffff' + word(raw), port };
  if (raw.length === 32) return { hex: [0, 8, 16, 24].map((i) => word(raw.slice(i, i + 8))).join(''), port };
  return null;
}

/**
 * Who owns the client end of the connection from `remote` to `local`, our own end. Reads the tables
 * each time: the caller keeps the answer for the connection's life.
 */
export async function localPeer(remote: { address?: string; port?: number }, local: { address?: string; port?: number }): Promise<LocalPeer> {
  const client = remote.address === undefined ? null : addressHex(remote.address);
  const server = local.address === undefined ? null : addressHex(local.address);
  // A socket already closed has no addresses any more.
  if (client === null || server === null) return { kind: 'orphan' };
  let readable = false;
  for (const table of TABLES) {
    let text: string;
    try {
      text = await readFile(table, 'latin1');
    } catch {
      continue;
    }
    readable = true;
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !f[0].endsWith(':')) continue;
      const near = tableEndpoint(f[1]);
      const far = tableEndpoint(f[2]);
      if (!near || !far || near.port !== remote.port || far.port !== local.port || near.hex !== client || far.hex !== server) continue;
      if (f[9] === '0') return { kind: 'orphan' };
      return { kind: 'local', uid: Number(f[7]) };
    }
  }
  return readable ? { kind: 'remote' } : { kind: 'unavailable' };
}
