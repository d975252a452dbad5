/** What a task run keeps of its output for the record: the last 64 KiB. */
export const OUTPUT_TAIL_BYTES = 64 * 1024;

/**
 * The last `maxBytes` of a run's combined output, as whole lines where possible. Lines are kept in a
 * list and dropped from the front, so a chatty task costs memory bounded by the limit, not its output.
 */
export class OutputTail {
  readonly maxBytes: number;
  #lines: string[] = [];
  /** Bytes of the kept lines, one newline each included. */
  #bytes = 0;
  #head = 0;

  constructor(maxBytes = OUTPUT_TAIL_BYTES) {
    this.maxBytes = maxBytes;
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
    while (this.#bytes > this.maxBytes) {
      this.#bytes -= Buffer.byteLength(this.#lines[this.#head]) + 1;
      this.#head++;
    }
    // Compact now and then rather than shift() per line.
    if (this.#head > 1024 && this.#head * 2 > this.#lines.length) {
      this.#lines = this.#lines.slice(this.#head);
      this.#head = 0;
    }
  }

  /** The kept lines, each ending with a newline. */
  text(): string {
    if (this.#head === this.#lines.length) return '';
    return this.#lines.slice(this.#head).join('\n') + '\n';
  }
}
