// The state directories are closed to other users at each start (the class of Docker's CVE-2021-41091).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileOptions } from '../core/config.js';
import { prepareStateDirectories } from './state-dirs.js';

test('data directories become 0700 (made so, or closed when an older daemon left them open); the home may be passed through, not listed', (t) => {
  const base = mkdtempSync(join(tmpdir(), 'nimbus-statedirs-'));
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const options = compileOptions({ home: join(base, 'home') }, {});
  mkdirSync(options.home, { mode: 0o755 });
  chmodSync(options.home, 0o755);
  mkdirSync(options.snapshotsDir, { mode: 0o711 });
  chmodSync(options.snapshotsDir, 0o711);
  prepareStateDirectories(options, { runsInstances: true });
  const mode = (d: string) => (statSync(d).mode & 0o777).toString(8);
  assert.equal(mode(options.home), '711');
  for (const d of [options.contentDir, options.snapshotsDir, options.containersDir, options.vmsDir, options.networkDir, options.tmpDir]) assert.equal(mode(d), '700', d);
  // a home made private by its administrator stays so
  const own = compileOptions({ home: join(base, 'private') }, {});
  mkdirSync(own.home, { mode: 0o700 });
  prepareStateDirectories(own, { runsInstances: false });
  assert.equal(mode(own.home), '700');
  assert.equal(mode(own.tmpDir), '700');
});
