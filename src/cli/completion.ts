/**
 * `berth completion bash|zsh`: a completion script for the shell, made from the verbs `berth` knows
 * (so it cannot drift from them), with each verb's flags read from its usage line and app names asked
 * of the running gateway (`berth status --json`) when one answers.
 *
 *   berth completion bash > /etc/bash_completion.d/berth
 *   berth completion zsh > "${fpath[1]}/_berth"
 */
import { UsageError } from './options.ts';

export const COMPLETION_USAGE = 'berth completion bash|zsh';

/** Verbs whose first word is an app name. */
const APP_VERBS = new Set(['status', 'ls', 'deploy', 'rollback', 'reload', 'releases', 'mode', 'run', 'logs', 'tasks', 'flush', 'history', 'scale']);

export function completion(args: string[], verbs: Record<string, { usage: string }>): number {
  if (args.length !== 1 || (args[0] !== 'bash' && args[0] !== 'zsh')) throw new UsageError('expected the shell: bash or zsh');
  const names = Object.keys(verbs).sort();
  const flags = Object.fromEntries(names.map((v) => [v, flagsOf(verbs[v]!.usage)]));
  const appVerbs = names.filter((v) => APP_VERBS.has(v));
  process.stdout.write(args[0] === 'bash' ? bash(names, flags, appVerbs) : zsh(names, flags, appVerbs));
  return 0;
}

/** The `--flags` a usage line names, each once. */
export function flagsOf(usage: string): string[] {
  return [...new Set([...usage.matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0]))].sort();
}

/** App names, as the running gateway lists them (nothing when none answers). */
const APPS = `berth status --json 2>/dev/null | sed -n 's/^      "name": "\\([^"]*\\)",$/\\1/p'`;

function bash(verbs: string[], flags: Record<string, string[]>, appVerbs: string[]): string {
  const cases = verbs.map((v) => `    ${v}) flags="${flags[v]!.join(' ')}" ;;`).join('\n');
  return `# bash completion for berth (berth completion bash)
_berth() {
  local cur verb flags
  cur="\${COMP_WORDS[COMP_CWORD]}"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=( $(compgen -W "${verbs.join(' ')} --help --version" -- "$cur") )
    return
  fi
  verb="\${COMP_WORDS[1]}"
  case "$verb" in
${cases}
    *) flags="" ;;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=( $(compgen -W "$flags --help" -- "$cur") )
    return
  fi
  if [ "$verb" = completion ]; then COMPREPLY=( $(compgen -W "bash zsh" -- "$cur") ); return; fi
  if [ "$verb" = mode ] && [ "$COMP_CWORD" -eq 3 ]; then COMPREPLY=( $(compgen -W "normal maintenance read-only" -- "$cur") ); return; fi
  case "$verb" in
    ${appVerbs.join('|')})
      if [ "$COMP_CWORD" -eq 2 ]; then
        COMPREPLY=( $(compgen -W "$(${APPS})" -- "$cur") )
        return
      fi ;;
  esac
  COMPREPLY=( $(compgen -f -- "$cur") )
}
complete -F _berth berth
`;
}

function zsh(verbs: string[], flags: Record<string, string[]>, appVerbs: string[]): string {
  const cases = verbs.map((v) => `    ${v}) flags=(${flags[v]!.join(' ')}) ;;`).join('\n');
  return `#compdef berth
# zsh completion for berth (berth completion zsh)
_berth() {
  local -a verbs flags apps
  verbs=(${verbs.join(' ')})
  if (( CURRENT == 2 )); then
    compadd -- $verbs --help --version
    return
  fi
  case $words[2] in
${cases}
    *) flags=() ;;
  esac
  if [[ $PREFIX == -* ]]; then
    compadd -- $flags --help
    return
  fi
  if [[ $words[2] == completion ]]; then compadd -- bash zsh; return; fi
  if [[ $words[2] == mode ]] && (( CURRENT == 4 )); then compadd -- normal maintenance read-only; return; fi
  case $words[2] in
    ${appVerbs.join('|')})
      if (( CURRENT == 3 )); then
        apps=(\${(f)"$(${APPS})"})
        compadd -- $apps
        return
      fi ;;
  esac
  _files
}
# Autoloaded from $fpath this file is _berth's body: complete now. Sourced, it registers the function.
if [[ $funcstack[1] == _berth ]]; then
  _berth "$@"
else
  compdef _berth berth
fi
`;
}
