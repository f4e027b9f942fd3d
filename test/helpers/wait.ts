/** Poll fn until it returns something other than undefined, or fail naming what was awaited (the default bound is generous: a loaded CI host runs 3× slower than a quiet one, and a pass never waits for it). */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000, everyMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Poll a synchronous condition every 10 ms until it holds, or fail naming what was awaited. */
export async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(what, async () => (cond() ? true : undefined), timeoutMs, 10);
}
