import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { checkProgram } from './container-bundle.js';
import type { OciSpec } from './oci-spec.js';

const configFor = (args: string[], mounts: string[] = []): OciSpec =>
  ({ process: { args, env: ['PATH=/usr/bin:/bin'], cwd: '/' }, mounts: mounts.map((destination) => ({ destination, type: 'bind', source: '/x', options: [] })) }) as unknown as OciSpec;
const layers = (lower: string) => [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${lower}`, 'upperdir=/u', 'workdir=/w'] }];

test('a program found is remembered for its layers, program, PATH and mount points; a refusal is not', () => {
  const root = mkdtempSync(path.join(tmpdir(), 'nimbus-bundle-'));
  try {
    mkdirSync(path.join(root, 'bin'));
    const prog = path.join(root, 'bin', `prog-${process.pid}`);
    const name = path.basename(prog);
    const lower = `/snapshots/${process.pid}/1/fs:/snapshots/${process.pid}/2/fs`;
    // not there yet: refused, and the refusal is not kept
    assert.throws(() => checkProgram(root, configFor([name]), layers(lower)), /executable file not found/);
    writeFileSync(prog, '#!/bin/sh\n');
    chmodSync(prog, 0o755);
    checkProgram(root, configFor([name]), layers(lower));
    // gone from this directory: the same layers' answer stands (their content cannot change) ...
    rmSync(prog);
    checkProgram(root, configFor([name]), layers(lower));
    // ... but not for other layers, another mount point list, or a rootfs that is not one overlay
    assert.throws(() => checkProgram(root, configFor([name]), layers(`${lower}:/snapshots/${process.pid}/3/fs`)), /not found/);
    assert.throws(() => checkProgram(root, configFor([name], ['/data']), layers(lower)), /not found/);
    assert.throws(() => checkProgram(root, configFor([name])), /not found/);
    assert.throws(() => checkProgram(root, configFor([name]), [{ type: 'bind', source: root, options: ['bind', 'rw'] }]), /not found/);
    assert.throws(() => checkProgram(root, configFor([`/bin/${name}`]), layers(lower)), /no such file/, 'another program');
    // a name longer than any file's (the API's fuzz sent one): not found, as runc says, not an ENAMETOOLONG
    assert.throws(() => checkProgram(root, configFor(['a'.repeat(300)]), layers(lower)), (e: Error & { code?: string }) => e.code === 'InvalidArgument' && /executable file not found/.test(e.message));
    assert.throws(() => checkProgram(root, configFor([`/bin/${'a'.repeat(300)}`]), layers(lower)), (e: Error & { code?: string }) => e.code === 'InvalidArgument');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
