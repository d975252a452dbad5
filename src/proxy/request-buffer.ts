/**
 * A request body read whole before the request takes an admission slot (nginx's
 * `proxy_request_buffering on`), so a client that trickles its body holds a connection of the gateway,
 * never a slot of the app.
 *
 * The body is kept in memory up to `memoryBytes`; past that, everything goes to a SpillFile in
 * `<state_dir>/tmp` (nginx's client_body_temp). A body over `maxBytes` is refused with 413 as soon as
 * that is known: from Content-Length before a byte is read, or while a chunked body is read. A body
 * that sends nothing for `timeoutMs` is refused with 408 (nginx's client_body_timeout: the time between
 * two reads, not for the whole body). The forwarded request then carries a Content-Length.
 *
 * Only requests with a body come here, so a bodiless GET pays nothing for it.
 *
 * What is held costs its size. A chunked body can arrive one byte per chunk, and node hands each chunk
 * over as its own Buffer, a view that also keeps the whole socket read alive: held as they come, 1 MiB
 * of such a body took about 200 MB of heap. So small chunks are copied into blocks, and a chunk is
 * held as it is only when it is large and is most of the memory it keeps alive.
 */
import type { IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { COPY_BLOCK_BYTES, SpillFile, SpillReader, worthCopying, type SpillOwner } from './spill-file.ts';

export interface RequestBufferOwner {
  /** The whole body is held: `body()` and `length` are final. */
  bodyReady(): void;
  /** 413 (too large), 408 (idle too long) or 500 (the temp file failed). */
  bodyRefused(status: 408 | 413 | 500, err: Error | null): void;
}

export interface RequestBufferLimits {
  maxBytes: number;
  memoryBytes: number;
  timeoutMs: number;
  stateDir: string;
}

export type RequestBufferState = 'reading' | 'ready' | 'refused' | 'destroyed';

export class RequestBuffer implements SpillOwner {
  /** Bytes of body read so far (all of it once ready). */
  length = 0;
  state: RequestBufferState = 'reading';
  #req: IncomingMessage;
  #owner: RequestBufferOwner;
  #limits: RequestBufferLimits;
  #chunks: Buffer[] = [];
  /** Bytes in #chunks. */
  #held = 0;
  /** The block small chunks are being copied into, not yet held; #blockUsed bytes of it are filled. */
  #block: Buffer | null = null;
  #blockUsed = 0;
  /** The Content-Length, or -1 for a chunked body: sizes the blocks. */
  #declared: number;
  #file: SpillFile | null = null;
  #timer: NodeJS.Timeout | null = null;
  #ended = false;
  /** Paused by us, because the disk is behind: not the client's idleness. */
  #diskPaused = false;

  constructor(req: IncomingMessage, limits: RequestBufferLimits, owner: RequestBufferOwner) {
    this.#req = req;
    this.#limits = limits;
    this.#owner = owner;
    const cl = req.headers['content-length'];
    this.#declared = cl === undefined ? -1 : Number(cl);
  }

  /** The declared Content-Length when it exceeds the limit: the request can be refused unread. */
  static declaredTooLarge(req: IncomingMessage, maxBytes: number): boolean {
    const cl = req.headers['content-length'];
    return cl !== undefined && Number(cl) > maxBytes;
  }

  /** Starts reading. The owner hears back through bodyReady or bodyRefused, never synchronously. */
  start(): void {
    const req = this.#req;
    req.on('data', this.#onData);
    req.on('end', this.#onEnd);
    req.on('error', ignore);
    this.#timer = setTimeout(this.#onTimeout, this.#limits.timeoutMs);
    this.#timer.unref();
  }

  /** Whether the body went to disk (tests and logs). */
  get spilled(): boolean {
    return this.#file !== null;
  }

  /**
   * The body for the upstream request: null when empty, a Buffer when in memory, else a stream over the
   * temp file (one per call; a request with a body is never retried, so one is enough).
   */
  body(): Buffer | SpillReader | null {
    if (this.#file === null) {
      const chunks = this.#chunks;
      if (chunks.length === 0) return null;
      return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, this.length);
    }
    return this.length === 0 ? null : new SpillReader(this.#file, this.length);
  }

  /** Drops the body and the temp file, whatever state the buffer is in. Idempotent. */
  destroy(): void {
    if (this.state === 'destroyed') return;
    const reading = this.state === 'reading';
    this.state = 'destroyed';
    this.#stop(reading);
    this.#chunks.length = 0;
    this.#block = null;
    // A SpillReader still reading gets nothing more; the descriptor closes once no read is in flight.
    this.#file?.close();
  }

  // ---- SpillOwner -------------------------------------------------------------------------------------

  spillProgress(): void {
    if (this.state !== 'reading') return;
    const file = this.#file!;
    if (this.#diskPaused && file.pending <= this.#limits.memoryBytes) {
      this.#diskPaused = false;
      this.#timer?.refresh();
      this.#req.resume();
    }
    if (this.#ended && file.pending === 0) this.#ready();
  }

  spillFailed(err: Error): void {
    if (this.state !== 'reading') return;
    this.#refuse(500, err);
  }

  // ---- request events ---------------------------------------------------------------------------------

  #onData = (chunk: Buffer): void => {
    if (this.state !== 'reading') return;
    this.#timer?.refresh();
    const length = this.length + chunk.length;
    this.length = length;
    if (length > this.#limits.maxBytes) {
      this.#refuse(413, null);
      return;
    }
    if (!worthCopying(chunk)) {
      this.#flushBlock();
      this.#hold(chunk);
      return;
    }
    // Copied into blocks, in order; a full block is held.
    let off = 0;
    while (off < chunk.length) {
      let block = this.#block;
      if (block === null) {
        // With a Content-Length, no bigger than what is still to come: a small body costs its size.
        // (Never empty, whatever the header said: the loop must copy at least a byte per block.)
        const rest = this.#declared - (length - chunk.length + off);
        block = this.#block = Buffer.allocUnsafe(rest > 0 && rest < COPY_BLOCK_BYTES ? rest : COPY_BLOCK_BYTES);
        this.#blockUsed = 0;
      }
      const n = chunk.copy(block, this.#blockUsed, off);
      off += n;
      this.#blockUsed += n;
      if (this.#blockUsed === block.length) {
        this.#block = null;
        this.#hold(block);
      }
    }
  };

  #onEnd = (): void => {
    if (this.state !== 'reading') return;
    this.#ended = true;
    this.#flushBlock();
    if (this.state !== 'reading') return;
    if (this.#file === null || this.#file.pending === 0) this.#ready();
  };

  /** Holds a partly filled block (trimmed: a small tail is copied rather than keep the whole block). */
  #flushBlock(): void {
    const block = this.#block;
    if (block === null) return;
    this.#block = null;
    const used = this.#blockUsed;
    if (used > 0) this.#hold(used * 2 < block.length ? Buffer.from(block.subarray(0, used)) : block.subarray(0, used));
  }

  /** Keeps bytes, in order: in memory within the memory share, then (all of them) on disk. */
  #hold(buf: Buffer): void {
    const file = this.#file;
    if (file !== null) {
      file.append(buf);
      this.#pauseForDisk(file);
    } else if (this.#held + buf.length <= this.#limits.memoryBytes) {
      this.#chunks.push(buf);
      this.#held += buf.length;
    } else {
      // Past the memory share: everything so far, and everything after, goes to disk in order.
      const spill = new SpillFile(join(this.#limits.stateDir, 'tmp'), this);
      this.#file = spill;
      for (const c of this.#chunks) spill.append(c);
      this.#chunks.length = 0;
      this.#held = 0;
      spill.append(buf);
      this.#pauseForDisk(spill);
    }
  }

  #onTimeout = (): void => {
    if (this.state !== 'reading' || this.#ended) return;
    if (this.#diskPaused) {
      // Waiting on our own disk, not on the client.
      this.#timer?.refresh();
      return;
    }
    this.#refuse(408, null);
  };

  #pauseForDisk(file: SpillFile): void {
    if (!this.#diskPaused && file.pending > this.#limits.memoryBytes) {
      this.#diskPaused = true;
      this.#req.pause();
    }
  }

  #ready(): void {
    this.#stop(false);
    this.state = 'ready';
    this.#owner.bodyReady();
  }

  #refuse(status: 408 | 413 | 500, err: Error | null): void {
    this.#stop(true);
    this.state = 'refused';
    this.#chunks.length = 0;
    this.#block = null;
    this.#owner.bodyRefused(status, err);
  }

  /** Stops listening; `discard`: the rest of the body, if any, is read and dropped. */
  #stop(discard: boolean): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    const req = this.#req;
    req.off('data', this.#onData);
    req.off('end', this.#onEnd);
    // Keep draining what the client still sends, so the refusal it gets is not lost to a reset when the
    // connection closes with unread bytes (the connection is closed after the refusal).
    if (discard && !req.complete) req.resume();
  }
}

function ignore(): void {}
