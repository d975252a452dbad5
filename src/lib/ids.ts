/** Ids that sort by when they were made: `<prefix><YYYYMMDDHHMMSS>-<6 hex>`, the time in UTC. */
import { randomBytes } from 'node:crypto';

export function timeSortedId(prefix: string, now: Date = new Date()): string {
  return `${prefix}${now.toISOString().slice(0, 19).replace(/[-T:]/g, '')}-${randomBytes(3).toString('hex')}`;
}
