import { StringDecoder } from 'node:string_decoder';

/** Longest line kept whole; longer output without a newline is cut into pieces of this many chars. */
export const MAX_LINE_CHARS = 16_384;

/**
 * Cuts a byte stream (a child's stdout or stderr) into lines. Chunks end anywhere, even inside a UTF-8
 * character, so the rest is buffered until its newline arrives; `end()` hands out a last unterminated
 * line. A trailing `\r` is dropped so CRLF output reads like LF output.
 */
export class LineSplitter {
  #decoder = new StringDecoder('utf8');
  #partial = '';
  #onLine: (line: string) => void;
  #maxChars: number;

  constructor(onLine: (line: string) => void, maxChars = MAX_LINE_CHARS) {
    this.#onLine = onLine;
    this.#maxChars = maxChars;
  }

  /** Feeds one chunk; calls onLine for every complete line in it. */
  push(chunk: Buffer | string): void {
    const text = this.#partial + (typeof chunk === 'string' ? chunk : this.#decoder.write(chunk));
    let start = 0;
    let nl: number;
    while ((nl = text.indexOf('\n', start)) !== -1) {
      this.#emit(text, start, nl);
      start = nl + 1;
    }
    let rest = text.slice(start);
    // A process that never writes a newline must not grow our memory without bound.
    while (rest.length > this.#maxChars) {
      // Never between the two halves of a surrogate pair (an emoji): each piece stays valid UTF-8.
      const cut = isHighSurrogate(rest.charCodeAt(this.#maxChars - 1)) && this.#maxChars > 1 ? this.#maxChars - 1 : this.#maxChars;
      this.#onLine(rest.slice(0, cut));
      rest = rest.slice(cut);
    }
    this.#partial = rest;
  }

  /** The stream ended: hands out what is left as a last line (if anything). */
  end(): void {
    const rest = this.#partial + this.#decoder.end();
    this.#partial = '';
    if (rest.length > 0) this.#emit(rest, 0, rest.length);
  }

  #emit(text: string, start: number, end: number): void {
    if (end > start && text.charCodeAt(end - 1) === 13) end--;
    this.#onLine(text.slice(start, end));
  }
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
