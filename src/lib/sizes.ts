/**
 * Sizes in config: `512`, `64k`, `1m`, `2g` (binary units: k = 1024 bytes), optionally with a `b`
 * (`64kb`, `1MB`). A bare number is bytes. Normalised config holds bytes.
 */
const UNIT_BYTES: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1024, m: 1024 ** 2, mb: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3 };
const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([kmg]?b?)$/i;

/** Parses a size; returns null when the value is not a valid non-negative size. */
export function parseSize(value: unknown): number | null {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : null;
  if (typeof value !== 'string') return null;
  const m = SIZE_RE.exec(value.trim());
  if (!m) return null;
  const bytes = Math.round(Number(m[1]) * UNIT_BYTES[m[2].toLowerCase()]);
  return Number.isSafeInteger(bytes) ? bytes : null;
}

/** Formats bytes the way config writes them, choosing the largest exact unit. */
export function formatSize(bytes: number): string {
  for (const unit of ['g', 'm', 'k'] as const) {
    const size = UNIT_BYTES[unit];
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}
