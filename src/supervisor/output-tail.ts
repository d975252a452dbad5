/**
 * The last lines of a process's output, bounded by a number of lines, of bytes, or both: an instance
 * and a build command keep their last 20 lines for an error message, a task run its last 64 KiB for
 * the record. Lines are kept in a list and dropped from the front, so chatty output costs memory
 * bounded by the limits, not by the output.
 */
export class OutputTail {
  readonly maxBytes: number;
  readonly maxLines: number;
  #lines: string[] = [];
  /** Bytes of the kept lines, one newline each included. */
  #bytes = 0;
  #head = 0;

  constructor(limits: { bytes?: number; lines?: number }) {
    this.maxBytes = limits.bytes ?? Number.POSITIVE_INFINITY;
    this.maxLines = limits.lines ?? Number.POSITIVE_INFINITY;
  }

  push(line: string): void {
    let size = Buffer.byteLength(line) + 1;
    if (size > this.maxBytes) {
      // One line longer than the whole tail: keep its end, which is what fits.
      const buf = Buffer.from(line);
      line = buf.subarray(buf.length - (this.maxBytes - 1)).toString('utf8').replace(/^\uFFFD/, '');
      size = Buffer.byteLength(line) + 1;
    }
    this.#lines.push(line);
    this.#bytes += size;
    while (this.#bytes > this.maxBytes || this.#lines.length - this.#head > this.maxLines) {
      this.#bytes -= Buffer.byteLength(this.#lines[this.#head]) + 1;
      this.#head++;
    }
    // Compact now and then rather than shift() per line.
    if (this.#head > 1024 && this.#head * 2 > this.#lines.length) {
      this.#lines = this.#lines.slice(this.#head);
      this.#head = 0;
    }
  }

  /** The kept lines, oldest first. */
  lines(): string[] {
    return this.#lines.slice(this.#head);
  }

  /** The kept lines, each ending with a newline. */
  text(): string {
    if (this.#head === this.#lines.length) return '';
    return this.#lines.slice(this.#head).join('\n') + '\n';
  }
}
