/** How an image config and a run request combine into the process to start (Docker's rules). */
import { InvalidArgument } from '../../core/errors.js';
import type { ProcessSpec } from '../../agent/drivers/instance-driver.js';
import type { ContainerConfig, ImageConfigDoc } from '../../store/records.js';

export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function mergeEnv(base: readonly string[], overrides: readonly string[]): string[] {
  const out = new Map<string, string>();
  for (const kv of [...base, ...overrides]) {
    const eq = kv.indexOf('=');
    const key = eq === -1 ? kv : kv.slice(0, eq);
    if (!key) throw new InvalidArgument(`invalid environment variable "${kv}"`);
    out.set(key, eq === -1 ? `${key}=` : kv);
  }
  return [...out.values()];
}

export function processSpecFor(image: ImageConfigDoc, c: ContainerConfig): ProcessSpec {
  const ic = image.config ?? {};
  // A user entrypoint replaces the image's entrypoint and drops the image's cmd.
  const entrypoint = c.entrypoint ?? ic.Entrypoint ?? [];
  const cmd = c.cmd?.length ? c.cmd : c.entrypoint ? [] : (ic.Cmd ?? []);
  const args = [...entrypoint, ...cmd];
  if (args.length === 0) throw new InvalidArgument('no command specified: the image has no entrypoint or cmd; give one after the image name');
  const env = mergeEnv(ic.Env ?? [], c.env);
  if (!env.some((e) => e.startsWith('PATH='))) env.unshift(DEFAULT_PATH);
  return {
    args,
    env,
    cwd: c.workdir || ic.WorkingDir || '/',
    user: c.user || ic.User || '0',
  };
}
