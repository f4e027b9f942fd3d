/**
 * The snapshotters this agent can run, as a registry (core/registry.ts): each declares a probe
 * of this host and makes a snapshotter rooted at `<snapshotsDir>/<name>`. The agent chooses one
 * at start (`--snapshotter auto|overlayfs|native`); everything else that needs a snapshotter of
 * the same kind elsewhere (the pull warm-up's scratch one) asks the registry by name.
 */
import { join } from 'node:path';
import type { CompiledOptions } from '../../core/config.js';
import { Internal, InvalidArgument } from '../../core/errors.js';
import { Registry, type ProbeResult } from '../../core/registry.js';
import { logger } from '../../core/log.js';
import { NativeSnapshotter } from './native.js';
import { OverlaySnapshotter, overlayfsSupported } from './overlayfs.js';
import type { Snapshotter } from './snapshotter.js';

const log = logger('agent.snapshots');

export interface SnapshotterContext {
  /** Where each snapshotter keeps its snapshots, under its own name. */
  snapshotsDir: string;
  /** A directory on the same filesystem as snapshotsDir for the probe's trial mount. */
  probeDir: string;
}

export const snapshotters = new Registry<Snapshotter, SnapshotterContext>('Snapshotter')
  .register({ name: 'overlayfs', probe: (ctx) => overlayfsSupported(ctx.probeDir), create: (ctx) => new OverlaySnapshotter(join(ctx.snapshotsDir, 'overlayfs')) })
  .register({ name: 'native', probe: async () => undefined, create: (ctx) => new NativeSnapshotter(join(ctx.snapshotsDir, 'native')) });

/** A snapshotter of this name rooted under another directory (e.g. a scratch one). */
export function snapshotterNamed(name: string, snapshotsDir: string): Snapshotter {
  const impl = snapshotters.get(name);
  if (!impl) throw new Internal(`no snapshotter named ${name}`);
  // both create synchronously and touch nothing until used; probeDir is only for probes
  return impl.create({ snapshotsDir, probeDir: snapshotsDir }) as Snapshotter;
}

/**
 * The snapshotter asked for, or with `auto` the first usable one in the registry's order of
 * preference (overlayfs, then native: the order they are registered in). Asking for one this host cannot run is refused with the
 * probe's reason, not silently replaced.
 */
export async function chooseSnapshotter(asked: CompiledOptions['snapshotter'], ctx: SnapshotterContext): Promise<{ snapshotter: Snapshotter; probes: ProbeResult[] }> {
  const probes = await snapshotters.probeAll(ctx); // in the registry's order of preference
  // native is always usable: auto always finds one
  const chosen = probes.find((p) => (asked === 'auto' ? p.usable : p.name === asked))!;
  if (!chosen.usable) throw new InvalidArgument(`snapshotter ${asked} is not usable here: ${chosen.reason}`);
  // with auto, every one before the chosen was unusable
  if (asked === 'auto') for (const p of probes.slice(0, probes.indexOf(chosen))) log.warn(`${p.name} unusable, using the ${chosen.name} snapshotter`, { reason: p.reason });
  return { snapshotter: snapshotterNamed(chosen.name, ctx.snapshotsDir), probes };
}
