/**
 * A git source: cloned into a fresh scratch repository with nothing of the source's configuration able
 * to run (see sources.ts), listed against the limits, then exported with `git archive`.
 */
import { spawn } from 'node:child_process';
import { lstat, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BerthError, errorMessage } from '../lib/errors.ts';
import { redactText, redactUrl } from '../lib/redact.ts';
import { releaseError, ReleaseBudget, verifyTree, type ReleaseLimits } from './release-tree.ts';
import { exited, run } from './tool-run.ts';

/** A git repository and ref. `local`: `url` is an absolute path to a repository on this machine. */
export interface GitSource {
  kind: 'git';
  url: string;
  ref: string;
  local: boolean;
}

/** Environment variables a git clone of a remote may need from the gateway's: ssh agent, proxies. */
const GIT_PASS_ENV = ['PATH', 'HOME', 'USER', 'LOGNAME', 'TMPDIR', 'SSH_AUTH_SOCK', 'http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'ALL_PROXY', 'all_proxy'];

/**
 * Config given on every git command line. Hooks, fsmonitor and submodule recursion are off whatever a
 * config file says, and only the transports named here may be used (no `ext::`, no `fd::`).
 */
const GIT_SAFE_CONFIG = [
  'core.hooksPath=/dev/null',
  'core.fsmonitor=false',
  'core.untrackedCache=false',
  'submodule.recurse=false',
  'protocol.allow=never',
  'protocol.file.allow=always',
  'protocol.https.allow=always',
  'protocol.http.allow=always',
  'protocol.ssh.allow=always',
  'protocol.git.allow=always',
].flatMap((c) => ['-c', c]);

/**
 * A clean environment for git. For a repository on this machine (a path or `file://`): no system or
 * global config at all, only a config file that marks every directory safe, so `upload-pack` serves a
 * repository owned by another user (it runs nothing that repository configures). For a remote: the
 * operator's own git config (credential helpers, `insteadOf`), which is not the source's.
 */
function gitEnv(onThisMachine: boolean, ceiling: string, safeConfig: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const key of GIT_PASS_ENV) if (process.env[key] !== undefined) env[key] = process.env[key];
  env.PATH ??= '/usr/local/bin:/usr/bin:/bin';
  env.LC_ALL = 'C';
  env.GIT_TERMINAL_PROMPT = '0';
  env.GIT_NO_REPLACE_OBJECTS = '1';
  // Never let git wander up from a path into an enclosing repository (a checkout holding it).
  env.GIT_CEILING_DIRECTORIES = ceiling;
  if (onThisMachine) {
    env.GIT_CONFIG_NOSYSTEM = '1';
    env.GIT_CONFIG_GLOBAL = safeConfig;
  }
  return env;
}

/** Whether a local path looks like a repository (bare, or a work tree with `.git`), without running git in it. */
async function looksLikeRepository(path: string): Promise<boolean> {
  for (const p of [join(path, '.git'), join(path, 'HEAD')]) {
    try {
      await lstat(p);
      return true;
    } catch {
      // Not this shape: try the next.
    }
  }
  return false;
}

export async function exportGit(source: GitSource, dest: string, scratch: string, limits: ReleaseLimits): Promise<string> {
  const shown = redactUrl(source.url);
  const where = `${shown}#${source.ref}`;
  const onThisMachine = source.local || /^file:\/\//i.test(source.url);
  const safeConfig = `${scratch}.gitconfig`;
  const env = gitEnv(onThisMachine, dirname(scratch), safeConfig);
  // What git prints may quote the URL as given, credentials included: scrubbed before it is recorded.
  const scrub = (err: unknown) => redactText(errorMessage(err), [source.url]);
  try {
    if (source.local) {
      try {
        await stat(source.url);
      } catch (err) {
        throw releaseError(`git repository ${shown} does not exist`, err);
      }
      if (!(await looksLikeRepository(source.url))) throw releaseError(`git ref "${source.ref}" not found in ${shown}: ${shown} is not a git repository`);
    }
    if (onThisMachine) await writeFile(safeConfig, '[safe]\n\tdirectory = *\n', { mode: 0o600 });
    try {
      // A fresh bare clone with an empty template (no hooks). --no-local: the source is read through
      // upload-pack, never opened as this git's own repository. A repository on this machine is
      // mirrored (every ref, as when it was read in place); a remote gives its branches and tags.
      const mode = onThisMachine ? '--mirror' : '--bare';
      await run('git clone', 'git', [...GIT_SAFE_CONFIG, 'clone', mode, '--no-local', '--template=', '--quiet', '--', source.url, scratch], env);
    } catch (err) {
      throw releaseError(`git clone of ${shown} failed: ${scrub(err)}`);
    }
    const git = [...GIT_SAFE_CONFIG, `--git-dir=${scratch}`];
    let sha: string;
    try {
      sha = (await run('git rev-parse', 'git', [...git, 'rev-parse', '--verify', '--quiet', `${source.ref}^{commit}`], env)).stdout.trim();
    } catch (err) {
      // --quiet leaves stderr empty for an unknown ref; other failures say why.
      const why = scrub(err);
      throw releaseError(`git ref "${source.ref}" not found in ${shown}${/exited with 1$/.test(why) ? '' : `: ${why}`}`);
    }
    // The tree's size and entry count, from git's own listing, before anything is written.
    const budget = new ReleaseBudget(limits, `git ${where}`);
    try {
      await run('git ls-tree', 'git', [...git, 'ls-tree', '-r', '-t', '-l', '--full-tree', sha], env, (line) => budget.add(treeEntrySize(line)));
    } catch (err) {
      if (err instanceof BerthError) throw err;
      throw releaseError(`cannot list ${where}: ${scrub(err)}`);
    }
    await mkdir(dest, { recursive: true });
    try {
      await gitArchive(git, sha, dest, env);
    } catch (err) {
      throw releaseError(`cannot export ${where}: ${scrub(err)}`);
    }
    await verifyTree(dest, `git ${where}`, limits);
    return sha;
  } finally {
    await rm(scratch, { recursive: true, force: true });
    await rm(safeConfig, { force: true });
  }
}

/** `<mode> <type> <object> <size>\t<path>` from `git ls-tree -l`: the size of a blob, 0 for trees and submodules. */
function treeEntrySize(line: string): number {
  const m = /^\d+ \w+ [0-9a-f]+ +(\d+|-)\t/.exec(line);
  return m && m[1] !== '-' ? Number(m[1]) : 0;
}

/** `git archive <sha> | tar -x`: a clean tree, no `.git`, no checkout state to clean up. */
async function gitArchive(git: string[], sha: string, dest: string, env: NodeJS.ProcessEnv): Promise<void> {
  const archive = spawn('git', [...git, 'archive', '--format=tar', sha], { stdio: ['ignore', 'pipe', 'pipe'], env });
  const tar = spawn('tar', ['-xf', '-', '-C', dest, '--no-same-owner', '--no-same-permissions'], { stdio: [archive.stdout!, 'ignore', 'pipe'] });
  // Node keeps its own end of git's stdout open after handing it to tar; without this, git would not see
  // a closed pipe if tar died early.
  archive.stdout!.destroy();
  await Promise.all([exited(archive, 'git archive'), exited(tar, 'tar -x')]);
}
