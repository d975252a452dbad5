/**
 * The part of an app's response that its client has not taken yet (nginx's `proxy_buffering on`).
 *
 * A Forward writes the response straight to the client while the client keeps up. Once the client's
 * socket pushes back, the rest goes here, so the app's response is still read as fast as the app sends
 * it and the admission slot is freed when the app is done, not when the client is. Bytes are kept in
 * memory up to `memoryBytes`, then appended to a SpillFile in `<state_dir>/tmp`; the client is fed from
 * memory first, then from the file, in order. New bytes go to memory again once the file has been read
 * to its end.
 *
 * A response that may not spill (no Content-Length, or one too large for the disk budget) is held in
 * memory up to `memoryBytes` only; past that, `push` says "full" and the Forward pauses the app, which
 * then streams at the client's pace (nginx does the same past proxy_max_temp_file_size).
 *
 * Small chunks are copied into blocks rather than held one Buffer each (see `worthCopying`), so what is
 * held costs its size even when the app sends its response one byte per chunk.
 */
import { join } from 'node:path';
import { BlockPacker, READ_BYTES, SpillFile, worthCopying, type SpillOwner } from './spill-file.ts';

export interface ResponseBufferOwner {
  /** A chunk read from disk is ready for `shift`, or the disk caught up (the app may be resumed). */
  bufferReadable(): void;
  bufferFailed(err: Error): void;
}

export class ResponseBuffer implements SpillOwner {
  readonly memoryBytes: number;
  readonly spillable: boolean;
  #stateDir: string;
  #owner: ResponseBufferOwner;
  #mem: Buffer[] = [];
  #memHead = 0;
  #memBytes = 0;
  /** The block small chunks are copied into; the last of #mem views its filled part until it is shifted. */
  #packer = new BlockPacker();
  #file: SpillFile | null = null;
  /** Next byte of the file to hand out. */
  #readPos = 0;
  #reading = false;
  /** A chunk read from the file, not yet shifted. */
  #ready: Buffer | null = null;
  #destroyed = false;

  constructor(stateDir: string, memoryBytes: number, spillable: boolean, owner: ResponseBufferOwner) {
    this.#stateDir = stateDir;
    this.memoryBytes = memoryBytes;
    this.spillable = spillable;
    this.#owner = owner;
  }

  /** Nothing held: memory, file and read-ahead are all empty. */
  get empty(): boolean {
    return this.#memBytes === 0 && this.#ready === null && (this.#file === null || this.#readPos >= this.#file.size);
  }

  /** Bytes held (memory and disk). */
  get length(): number {
    return this.#memBytes + (this.#ready?.length ?? 0) + (this.#file === null ? 0 : this.#file.size - this.#readPos);
  }

  /** Whether the response went to disk (tests and logs). */
  get spilled(): boolean {
    return this.#file !== null;
  }

  /** The app should be paused: memory is full and may not spill, or the disk is behind. */
  get full(): boolean {
    // `> 0` first: with `memory: 0` an empty buffer must still take the next chunk, or nothing resumes.
    const file = this.#file;
    if (file !== null && file.pending > 0 && file.pending >= this.memoryBytes) return true;
    return !this.spillable && this.#memBytes > 0 && this.#memBytes >= this.memoryBytes;
  }

  /** Holds a chunk; returns false when the app should be paused (see `full`). */
  push(chunk: Buffer): boolean {
    if (this.#destroyed) return false;
    const file = this.#file;
    const fileEmpty = file === null || (this.#readPos >= file.size && this.#ready === null && !this.#reading);
    if (fileEmpty && (!this.spillable || this.#memBytes + chunk.length <= this.memoryBytes)) {
      if (worthCopying(chunk)) this.#packer.pack(this.#mem, chunk);
      else {
        this.#packer.reset();
        this.#mem.push(chunk);
      }
      this.#memBytes += chunk.length;
    } else {
      this.#file ??= new SpillFile(join(this.#stateDir, 'tmp'), this);
      this.#file.append(chunk);
    }
    return !this.full;
  }

  /**
   * The next chunk for the client, or null when nothing is available right now (empty, or a read from
   * disk is under way: `bufferReadable` follows).
   */
  shift(): Buffer | null {
    if (this.#memBytes > 0) {
      const chunk = this.#mem[this.#memHead];
      this.#mem[this.#memHead++] = EMPTY;
      this.#memBytes -= chunk.length;
      if (this.#memHead === this.#mem.length) {
        // That was the last one, maybe a view of the tail block: the client now holds it, so it must
        // not change under it. The next small chunk starts a new block.
        this.#packer.reset();
        this.#mem.length = 0;
        this.#memHead = 0;
      }
      return chunk;
    }
    const ready = this.#ready;
    if (ready !== null) {
      this.#ready = null;
      this.#readAhead();
      return ready;
    }
    this.#readAhead();
    return null;
  }

  /** Drops everything and closes the temp file. Idempotent. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#mem.length = 0;
    this.#memBytes = 0;
    this.#packer.reset();
    this.#ready = null;
    this.#file?.close();
  }

  // ---- SpillOwner -------------------------------------------------------------------------------------

  spillProgress(): void {
    if (this.#destroyed) return;
    this.#owner.bufferReadable();
  }

  spillFailed(err: Error): void {
    if (this.#destroyed) return;
    this.#owner.bufferFailed(err);
  }

  /** Starts reading the next part of the file when nothing is read ahead and bytes are on disk. */
  #readAhead(): void {
    const file = this.#file;
    if (file === null || this.#reading || this.#ready !== null || this.#readPos >= file.written) return;
    this.#reading = true;
    file.read(this.#readPos, READ_BYTES, (err, chunk) => {
      this.#reading = false;
      if (this.#destroyed) return;
      if (err !== null) return this.#owner.bufferFailed(err);
      this.#readPos += chunk!.length;
      this.#ready = chunk;
      this.#owner.bufferReadable();
    });
  }
}

const EMPTY = Buffer.alloc(0);
