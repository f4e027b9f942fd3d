import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseQemuVersion, qemuTakesRunWith, takesRunWithUser } from './qemu-version.js';

test('the version line, and which versions take -run-with user= (9.1 on)', () => {
  assert.deepEqual(parseQemuVersion('QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright'), { major: 10, minor: 0, micro: 2 });
  assert.deepEqual(parseQemuVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)'), { major: 7, minor: 2, micro: 22 });
  assert.deepEqual(parseQemuVersion('QEMU emulator version 9.1'), { major: 9, minor: 1, micro: 0 });
  assert.equal(parseQemuVersion('qemu-img version 10.0.2'), undefined);
  assert.deepEqual(['7.2', '8.2', '9.0', '9.1', '9.2', '10.0'].map((v) => takesRunWithUser(parseQemuVersion(`QEMU emulator version ${v}.0`))), [false, false, false, true, true, true]);
  assert.equal(takesRunWithUser(undefined), false);
});

test('the host\'s QEMU is asked once; a binary that cannot say is taken for an old one', () => {
  const line = execFileSync('qemu-system-x86_64', ['-version'], { encoding: 'utf8' });
  assert.equal(qemuTakesRunWith('qemu-system-x86_64'), takesRunWithUser(parseQemuVersion(line)), line);
  assert.equal(qemuTakesRunWith('/nonexistent/qemu-system-x86_64'), false);
});

test('a QEMU replaced under a running agent (an upgrade) is asked again', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'qemu-version-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const binary = path.join(dir, 'qemu-system-x86_64');
  // installed as package managers do: a new file renamed over the old one
  const install = (version: string) => {
    writeFileSync(`${binary}.new`, `#!/bin/sh\necho "QEMU emulator version ${version} (test)"\n`, { mode: 0o755 });
    renameSync(`${binary}.new`, binary);
  };
  install('7.2.22');
  assert.equal(qemuTakesRunWith(binary), false);
  install('10.0.2');
  assert.equal(qemuTakesRunWith(binary), true);
  // through PATH as well
  const before = process.env.PATH;
  t.after(() => { process.env.PATH = before; });
  process.env.PATH = `${dir}:${before ?? ''}`;
  assert.equal(qemuTakesRunWith('qemu-system-x86_64'), true);
  install('8.2.0');
  assert.equal(qemuTakesRunWith('qemu-system-x86_64'), false);
});
