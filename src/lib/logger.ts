import { pino, type Logger as PinoLogger, type LevelWithSilent, type DestinationStream } from 'pino';

export type Logger = PinoLogger;
export type LogLevel = LevelWithSilent;

/** The named loggers that `log_levels` may set. `root` is the fallback for the others. */
export const LOGGER_NAMES = ['root', 'proxy', 'supervisor', 'deploy', 'scheduler', 'api', 'store'] as const;
export type LoggerName = (typeof LOGGER_NAMES)[number];

/**
 * Hands out one pino child per component, each at the level `log_levels` gives it (else root's level).
 * Lines are JSON on stdout: a constant `msg` plus fields.
 */
export class LoggerFactory {
  readonly root: Logger;
  #levels: Partial<Record<string, LogLevel>>;
  #children = new Map<string, Logger>();
  #sonic: ReturnType<typeof pino.destination> | null = null;

  constructor(levels: Partial<Record<string, LogLevel>> = {}, destination?: DestinationStream) {
    this.#levels = levels;
    const rootLevel = levels.root ?? 'info';
    if (!destination) this.#sonic = pino.destination({ fd: 1, sync: false, minLength: 4096 });
    this.root = pino(
      { level: rootLevel, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime },
      destination ?? this.#sonic!,
    );
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

  /** Writes out buffered lines synchronously (before exit). */
  flush(): void {
    try {
      if (this.#sonic) this.#sonic.flushSync();
      else this.root.flush();
    } catch {
      // stdout may already be closed; nothing left to do with the lines.
    }
  }
}

/** A logger that writes nothing: for tests and for the CLI's client side. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
