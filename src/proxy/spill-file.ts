/**
 * A temp file that a request body or a response overflows into once it outgrows its memory share
 * (nginx's client_body_temp / proxy_temp, kamal-proxy's buffer package).
 *
 * The file is created in `<state_dir>/tmp` (made 0700 when missing) with mode 0600 and unlinked at
 * once, as nginx does with its temp files: only the open descriptor reaches the data, and the kernel
 * frees the space when the descriptor closes, however the request ends, even when the gateway is
 * killed. Writes are appended in order, one at a time (several queued chunks go in one writev); reads
 * are positional and see only bytes whose write has completed. The descriptor is never handed to a
 * stream that could close it behind our back (fs.ReadStream closes its fd on destroy, even with
 * autoClose off): `SpillReader` reads through this class instead.
 *
 * This is off the hot path (only bodies and responses past the memory threshold get here), so it uses
 * plain callbacks and closures.
 */
import { close, mkdir, open, read, unlink, writev } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { join } from 'node:path';

/** What a SpillFile tells its owner. Called asynchronously, never from inside a SpillFile method. */
export interface SpillOwner {
  /** More bytes are on disk (`written` grew, so `pending` shrank). */
  spillProgress(): void;
  /** The file could not be created or written (disk full, permissions...). Read errors go to `read`'s callback. */
  spillFailed(err: Error): void;
}

/** Bytes read from a temp file at a time. */
export const READ_BYTES = 64 * 1024;

/** Size of the blocks that small chunks are copied into while they wait (here, and in the buffers). */
export const COPY_BLOCK_BYTES = 16 * 1024;

/**
 * Whether a chunk is better copied than held. A Buffer from a socket is a view that keeps the whole
 * read under it alive, and each costs an object: a peer sending one-byte chunks (chunked framing allows
 * it) would make the bytes held cost a hundred times their size. A chunk is held as it is only when it
 * is large and is most of the memory under it.
 */
export function worthCopying(chunk: Buffer): boolean {
  return chunk.length < 8 * 1024 || chunk.length * 2 < chunk.buffer.byteLength;
}

const EMPTY = Buffer.alloc(0);

/**
 * Appends small chunks to a list of buffers by copying them into shared blocks of COPY_BLOCK_BYTES: the
 * list's last element is a view of the block being filled, widened as bytes arrive. `reset()` before
 * pushing anything else onto the list, so the next copy starts a new block after it.
 */
export class BlockPacker {
  #tail: Buffer | null = null;
  #used = 0;

  pack(list: Buffer[], chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      let tail = this.#tail;
      if (tail === null || this.#used === tail.length) {
        tail = this.#tail = Buffer.allocUnsafe(COPY_BLOCK_BYTES);
        this.#used = 0;
        list.push(EMPTY);
      }
      const n = chunk.copy(tail, this.#used, off);
      off += n;
      this.#used += n;
      list[list.length - 1] = tail.subarray(0, this.#used);
    }
  }

  /** The list's last element is no longer this packer's block. */
  reset(): void {
    this.#tail = null;
  }
}

/** Directories already made (or found) in this process: mkdir runs once per tmp dir. */
const madeDirs = new Set<string>();

/** Read-write, and never an existing file (libuv adds O_CLOEXEC itself). */
const OPEN_FLAGS = 'wx+';

export class SpillFile {
  readonly dir: string;
  /** Bytes appended so far (queued or on disk). */
  size = 0;
  /** Bytes on disk: a read below this offset is safe. */
  written = 0;
  #fd = -1;
  #owner: SpillOwner;
  #queue: Buffer[] = [];
  /** The block small chunks are copied into while they wait; the last of #queue views its filled part. */
  #packer = new BlockPacker();
  #writing = false;
  /** Reads in flight: the descriptor is closed only once none is (a reused number must never be read). */
  #reads = 0;
  #closed = false;
  #failed = false;
  #retried = false;

  constructor(dir: string, owner: SpillOwner) {
    this.dir = dir;
    this.#owner = owner;
    if (madeDirs.has(dir)) this.#open();
    else this.#mkdir();
  }

  /** Bytes appended but not yet on disk: the owner stops reading its source while this is large. */
  get pending(): number {
    return this.size - this.written;
  }

  /** Whether the descriptor is open (tests look for it under /proc/self/fd). */
  get fd(): number {
    return this.#fd;
  }

  /** Appends a chunk; it reaches the disk in order. The chunk must not be modified afterwards. */
  append(chunk: Buffer): void {
    if (this.#closed || this.#failed) return;
    this.size += chunk.length;
    // Small chunks that would wait (a write is under way, or the file is not open yet) are copied into
    // blocks: many of them must not cost an object each.
    if ((this.#writing || this.#fd < 0) && worthCopying(chunk)) this.#packer.pack(this.#queue, chunk);
    else {
      this.#packer.reset();
      this.#queue.push(chunk);
    }
    this.#flush();
  }

  /**
   * Reads up to `length` bytes at `position` (which must be below `written`) and hands them to `done`.
   * Nothing is called back once the file is closed.
   */
  read(position: number, length: number, done: (err: Error | null, chunk: Buffer | null) => void): void {
    if (this.#closed || this.#failed) return;
    const n = Math.min(length, this.written - position);
    const buf = Buffer.allocUnsafe(n);
    this.#reads++;
    read(this.#fd, buf, 0, n, position, (err, got) => {
      this.#reads--;
      if (this.#closed) return this.#closeIfIdle();
      if (err !== null) return done(err, null);
      if (got === 0) return done(new Error('temp file shorter than written'), null);
      done(null, got === n ? buf : buf.subarray(0, got));
    });
  }

  /** Closes the descriptor (freeing the space); pending writes are dropped. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue.length = 0;
    this.#packer.reset();
    // A write or read in flight still uses the descriptor: its callback closes it.
    this.#closeIfIdle();
  }

  #closeIfIdle(): void {
    if (this.#fd >= 0 && !this.#writing && this.#reads === 0) this.#closeFd();
  }

  #mkdir(): void {
    mkdir(this.dir, { recursive: true, mode: 0o700 }, (err) => {
      if (err !== null) return this.#fail(err);
      madeDirs.add(this.dir);
      this.#open();
    });
  }

  #open(): void {
    if (this.#closed) return;
    const path = join(this.dir, `berth-${process.pid}-${randomBytes(8).toString('hex')}`);
    open(path, OPEN_FLAGS, 0o600, (err, fd) => {
      if (err !== null) {
        // The directory was removed since it was made (a state dir reset): make it again, once.
        if (err.code === 'ENOENT' && !this.#retried) {
          this.#retried = true;
          madeDirs.delete(this.dir);
          return this.#mkdir();
        }
        return this.#fail(err);
      }
      // Unlinked at once: the descriptor is the only way in, and the space goes when it closes.
      unlink(path, () => {
        this.#fd = fd;
        if (this.#closed) return this.#closeIfIdle();
        this.#flush();
      });
    });
  }

  #flush(): void {
    if (this.#writing || this.#fd < 0 || this.#queue.length === 0) return;
    const chunks = this.#queue;
    this.#queue = [];
    // The blocks go to the disk as they are: nothing may be copied into them any more.
    this.#packer.reset();
    let bytes = 0;
    for (const c of chunks) bytes += c.length;
    this.#writing = true;
    this.#writeAll(chunks, bytes, this.written);
  }

  #writeAll(chunks: Buffer[], bytes: number, position: number): void {
    writev(this.#fd, chunks, position, (err, n) => {
      if (this.#closed) {
        this.#writing = false;
        return this.#closeIfIdle();
      }
      if (err !== null) {
        this.#writing = false;
        return this.#fail(err);
      }
      this.written += n;
      if (n < bytes) {
        // A short write: go on with what is left.
        let skip = n;
        while (skip > 0 && skip >= chunks[0].length) skip -= chunks.shift()!.length;
        if (skip > 0) chunks[0] = chunks[0].subarray(skip);
        this.#writeAll(chunks, bytes - n, position + n);
        return;
      }
      this.#writing = false;
      this.#flush();
      this.#owner.spillProgress();
    });
  }

  #closeFd(): void {
    const fd = this.#fd;
    this.#fd = -1;
    if (fd >= 0) close(fd, () => {});
  }

  #fail(err: Error): void {
    if (this.#failed || this.#closed) return;
    this.#failed = true;
    this.close();
    this.#owner.spillFailed(err);
  }
}

/** The bytes of a SpillFile, from 0 to `length`, as a stream (the upstream request body). */
export class SpillReader extends Readable {
  #file: SpillFile;
  #length: number;
  #pos = 0;

  constructor(file: SpillFile, length: number) {
    super({ highWaterMark: READ_BYTES });
    this.#file = file;
    this.#length = length;
  }

  override _read(): void {
    if (this.#pos >= this.#length) {
      this.push(null);
      return;
    }
    this.#file.read(this.#pos, Math.min(READ_BYTES, this.#length - this.#pos), (err, chunk) => {
      if (err !== null) return void this.destroy(err);
      this.#pos += chunk!.length;
      this.push(chunk);
    });
  }
}
