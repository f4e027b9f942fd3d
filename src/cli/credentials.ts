/**
 * Where `nimbus login` keeps its session token: $NIMBUS_CONFIG/token, else
 * ~/.config/nimbus/token (XDG_CONFIG_HOME honoured), mode 0600 in a 0700
 * directory. NIMBUS_TOKEN in the environment overrides the stored token.
 */
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export function tokenFile(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NIMBUS_CONFIG) return join(env.NIMBUS_CONFIG, 'token');
  return join(env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config'), 'nimbus', 'token');
}

export function readStoredToken(env: NodeJS.ProcessEnv = process.env): string | undefined {
  try {
    return readFileSync(tokenFile(env), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

export function storeToken(token: string, env: NodeJS.ProcessEnv = process.env): string {
  const file = tokenFile(env);
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  rmSync(file, { force: true }); // a fresh file: an older one may have had a wider mode
  writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return file;
}

export function removeStoredToken(env: NodeJS.ProcessEnv = process.env): boolean {
  const file = tokenFile(env);
  try {
    rmSync(file);
    return true;
  } catch {
    return false;
  }
}
