/**
 * WebSocket frame boundaries in a byte stream (RFC 6455 § 5.2), so the gateway can put a close frame of
 * its own between two of the instance's frames rather than inside one (tunnel.ts).
 */

/**
 * Follows WebSocket frame boundaries in a byte stream (RFC 6455 § 5.2): it reads each frame's header
 * (2 to 14 bytes) and skips its payload without looking at it.
 */
export class FrameBoundary {
  /** Payload (and mask key) bytes left in the current frame. */
  #need = 0;
  #header = Buffer.alloc(14);
  #have = 0;
  /** The header's full length once its second byte is known; 0 before. */
  #headerLength = 0;

  /** True between frames: a frame of our own can go in here. */
  get atBoundary(): boolean {
    return this.#need === 0 && this.#have === 0;
  }

  /**
   * Moves past `chunk`. With `stop`, it stops at the first boundary it reaches (the start counts) and
   * returns how many bytes it consumed; else it consumes the whole chunk.
   */
  consume(chunk: Buffer, stop: boolean): number {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (stop && this.#need === 0 && this.#have === 0) return i;
      if (this.#need > 0) {
        const take = Math.min(this.#need, n - i);
        this.#need -= take;
        i += take;
        continue;
      }
      const h = this.#header;
      h[this.#have++] = chunk[i++];
      if (this.#have === 2) {
        const len7 = h[1] & 0x7f;
        this.#headerLength = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0);
      }
      if (this.#have >= 2 && this.#have === this.#headerLength) {
        const len7 = h[1] & 0x7f;
        const payload = len7 === 126 ? h.readUInt16BE(2) : len7 === 127 ? h.readUInt32BE(2) * 0x1_0000_0000 + h.readUInt32BE(6) : len7;
        const mask = (h[1] & 0x80) !== 0 ? 4 : 0;
        this.#need = payload + mask;
        this.#have = 0;
        this.#headerLength = 0;
      }
    }
    return i;
  }
}
