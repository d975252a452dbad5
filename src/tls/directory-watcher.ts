import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from '../lib/logger.ts';

/**
 * Watches a set of directories (inotify through fs.watch) and calls `onChange` once things have been
 * quiet for `debounceMs`. Directories, not files: an editor's write-then-rename and certbot's or
 * Kubernetes' symlink swap replace the file (a new inode), which a watch on the old file never sees, but
 * each is an entry change in the directory. Events are only a hint to re-read; the reader decides what
 * changed. A directory that cannot be watched (missing, a network filesystem) is left to SIGHUP.
 */
export class DirectoryWatcher {
  #onChange: () => void;
  #debounceMs: number;
  #log: Logger;
  #watchers = new Map<string, FSWatcher>();
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(onChange: () => void, options: { debounceMs: number; logger: Logger }) {
    this.#onChange = onChange;
    this.#debounceMs = options.debounceMs;
    this.#log = options.logger;
  }

  /** Watches exactly these directories from now on: new ones are added, ones no longer named are closed. */
  watch(directories: Iterable<string>): void {
    if (this.#closed) return;
    const wanted = new Set(directories);
    for (const [dir, watcher] of this.#watchers) {
      if (!wanted.has(dir)) {
        watcher.close();
        this.#watchers.delete(dir);
      }
    }
    for (const dir of wanted) {
      if (this.#watchers.has(dir)) continue;
      try {
        const watcher = watch(dir, { persistent: false }, () => this.#schedule());
        // The directory went away (or inotify gave up): forget it; the next re-read watches it again if it is back.
        watcher.on('error', (err) => {
          this.#log.warn({ dir, err: err.message }, 'certificate directory watch failed');
          watcher.close();
          if (this.#watchers.get(dir) === watcher) this.#watchers.delete(dir);
          this.#schedule();
        });
        this.#watchers.set(dir, watcher);
      } catch (err) {
        this.#log.warn({ dir, err: (err as Error).message }, 'certificate directory not watched');
      }
    }
  }

  /** The directories watched now. */
  get directories(): string[] {
    return [...this.#watchers.keys()].sort();
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    for (const watcher of this.#watchers.values()) watcher.close();
    this.#watchers.clear();
  }

  #schedule(): void {
    if (this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#onChange();
    }, this.#debounceMs);
    this.#timer.unref();
  }
}
