/** Characters that make a command more than one simple command (lists, pipes, subshells, groups). */
const COMPOUND_RE = /[;&|\n\r`(){}]/;
/** Leading `NAME=value ` words with plain (unquoted, unescaped) values. */
const ASSIGNMENTS_RE = /^\s*(?:[A-Za-z_][A-Za-z0-9_]*=[^\s'"\\]*\s+)*/;
const RESERVED = new Set(['!', '[[', 'case', 'do', 'done', 'elif', 'else', 'esac', 'exec', 'fi', 'for', 'function', 'if', 'in', 'select', 'then', 'time', 'until', 'while']);

/**
 * The script given to `/bin/sh -c` for a process command. A simple command (`node server.js`,
 * `WEB_X=1 "bin/web" --flag`) gets `exec` before its command word, so the app replaces the shell: its
 * pid is the one status shows and the one that gets signals first, and its own exit code or signal is
 * what we see. Debian's dash does not do this by itself. Anything else (lists, pipes, subshells,
 * keywords, quoted assignments) runs as written, with the shell as group leader; signals still reach
 * the app through the process group.
 */
export function execCommand(command: string): string {
  if (command.trim() === '' || COMPOUND_RE.test(command)) return command;
  const at = ASSIGNMENTS_RE.exec(command)![0].length;
  const word = command.slice(at).split(/\s/, 1)[0];
  if (word === '' || word.includes('=') || RESERVED.has(word)) return command;
  // Assignments before `exec` still reach the program: POSIX applies them to a special built-in.
  return `${command.slice(0, at)}exec ${command.slice(at)}`;
}
