import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger as PinoLogger, type LevelWithSilent, type DestinationStream } from 'pino';
import { LogWriter } from './log-writer.ts';

export type Logger = PinoLogger;
export type LogLevel = LevelWithSilent;

/** The named loggers that `log_levels` may set. `root` is the fallback for the others. */
export const LOGGER_NAMES = ['root', 'proxy', 'supervisor', 'deploy', 'scheduler', 'api', 'store', 'tls', 'fleet'] as const;
export type LoggerName = (typeof LOGGER_NAMES)[number];

/** The gateway's own log in its state dir: `berth start` writes it beside stdout (CLI verbs do not). */
export function gatewayLogFile(stateDir: string): string {
  return join(stateDir, 'logs', 'berth.log');
}

/** A file that every line goes to as well, rotated by size (defaults: lib/log-writer.ts). */
export interface LogFileOptions {
  file: string;
  maxBytes?: number;
  keepFiles?: number;
}

/**
 * Hands out one pino child per component, each at the level `log_levels` gives it (else root's level).
 * Lines are JSON on stdout: a constant `msg` plus fields; with `logToFile`, also in a rotated file.
 */
export class LoggerFactory {
  readonly root: Logger;
  #levels: Partial<Record<string, LogLevel>>;
  #children = new Map<string, Logger>();
  #sonic: ReturnType<typeof pino.destination> | null = null;
  #destination: DestinationStream;
  #file: LogWriter | null = null;

  /** `bindings`: fields on every line (a proxy worker thread's `thread`). */
  constructor(levels: Partial<Record<string, LogLevel>> = {}, destination?: DestinationStream, bindings: Record<string, unknown> = {}) {
    this.#levels = levels;
    const rootLevel = levels.root ?? 'info';
    if (!destination && wantsPretty()) destination = new PrettyStream(process.stdout);
    if (!destination) this.#sonic = pino.destination({ fd: 1, sync: false });
    this.#destination = destination ?? this.#sonic!;
    // Every line goes to the output and, once logToFile is called, to the file: JSON there, whatever
    // the terminal gets. Queuing for the file is a push; the disk is written off the event loop.
    const tee: DestinationStream = { write: (text: string) => this.#write(text) };
    this.root = pino({ level: rootLevel, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime }, tee);
  }

  /**
   * From now on every line (proxy worker threads' too) also goes to `opts.file`, rotated by size. A file
   * that cannot be written is said once on the output, which still gets every line; nothing else stops.
   */
  logToFile(opts: LogFileOptions): void {
    this.#file = new LogWriter({ file: opts.file, maxBytes: opts.maxBytes, keepFiles: opts.keepFiles, logger: this.root });
  }

  /** Writes lines another thread formatted (proxy worker threads' logs) to this output, as they are. */
  writeRaw(text: string): void {
    this.#write(text);
  }

  #write(text: string): void {
    this.#destination.write(text);
    this.#file?.write(text);
  }

  /** The logger for a component; created once and cached. */
  get(name: LoggerName | string): Logger {
    let child = this.#children.get(name);
    if (!child) {
      const level = this.#levels[name] ?? this.#levels.root ?? 'info';
      child = this.root.child({ logger: name }, { level });
      this.#children.set(name, child);
    }
    return child;
  }

  /** Applies new levels (config reload) to the loggers already handed out. */
  setLevels(levels: Partial<Record<string, LogLevel>>): void {
    this.#levels = levels;
    this.root.level = levels.root ?? 'info';
    for (const [name, child] of this.#children) child.level = levels[name] ?? levels.root ?? 'info';
  }

  /** Writes out buffered lines synchronously (before exit), the file's included. */
  flush(): void {
    this.#file?.flushSync();
    try {
      if (this.#sonic) this.#sonic.flushSync();
      else this.root.flush();
    } catch {
      // stdout may already be closed; nothing left to do with the lines.
    }
  }

  /** Writes out the file's lines and closes it (a later line opens it again). */
  async closeFile(): Promise<void> {
    await this.#file?.close();
  }
}

/**
 * JSON lines are for machines; a person at a terminal gets one readable line per entry instead.
 * `BERTH_LOG_FORMAT=json|pretty` overrides the terminal check.
 */
function wantsPretty(): boolean {
  const format = process.env.BERTH_LOG_FORMAT;
  if (format === 'json') return false;
  if (format === 'pretty') return true;
  return process.stdout.isTTY === true;
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO ', 40: 'WARN ', 50: 'ERROR', 60: 'FATAL' };
const SKIP_KEYS = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'logger']);

/** Formats pino's JSON lines as `HH:MM:SS.mmm LEVEL logger: msg key=value ...`. */
export class PrettyStream extends Writable {
  #out: NodeJS.WritableStream;
  constructor(out: NodeJS.WritableStream) {
    super();
    this.#out = out;
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    let text = '';
    for (const line of chunk.toString('utf8').split('\n')) {
      if (!line) continue;
      try {
        const e = JSON.parse(line) as Record<string, unknown>;
        const time = typeof e.time === 'string' ? e.time.slice(11, 23) : '';
        const fields = Object.entries(e)
          .filter(([k]) => !SKIP_KEYS.has(k))
          .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
          .join(' ');
        text += `${time} ${LEVEL_NAMES[Number(e.level)] ?? e.level} ${e.logger ?? 'root'}: ${e.msg ?? ''}${fields ? ' ' + fields : ''}\n`;
      } catch {
        text += line + '\n';
      }
    }
    this.#out.write(text);
    cb();
  }
}

/** A logger that writes nothing: for tests and for the CLI's client side. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
