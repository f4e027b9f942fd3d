import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DEFAULT_CAPABILITIES } from './oci-spec.js';
import { DEFAULT_SECCOMP_PROFILE, ociSeccomp, readSeccompProfile, seccompLoader, type OciSeccomp, type SeccompProfile } from './seccomp.js';

const X64 = { arch: 'x64', kernel: '6.1.0-13-amd64' };
const allowed = (f: OciSeccomp, name: string) => f.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW' && r.names.includes(name));
const refusal = (f: OciSeccomp, name: string) => f.syscalls.find((r) => r.action === 'SCMP_ACT_ERRNO' && r.names.includes(name));

const PROFILE: SeccompProfile = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: 38,
  archMap: [{ architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] }],
  syscalls: [
    { names: ['read', 'write', 'unshare', 'mount', 'setns', 'clone', 'clone3', 'keyctl'], action: 'SCMP_ACT_ALLOW' },
    { names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 8, op: 'SCMP_CMP_EQ' }] },
    { names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64', 'x32'] } },
    { names: ['arm_fadvise64_64'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm', 'arm64'] } },
    { names: ['chroot'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_CHROOT'] } },
    { names: ['chroot'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, excludes: { caps: ['CAP_SYS_CHROOT'] } },
    { names: ['bpf'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
    { names: ['newer'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '6.2' } },
    { names: ['older'], action: 'SCMP_ACT_ALLOW', excludes: { minKernel: '5.0' } },
  ],
};

test('seccomp: a profile in Docker\'s format folded for the architecture, the kernel and the capabilities, as Docker folds it', () => {
  const f = ociSeccomp(PROFILE, ['CAP_SYS_CHROOT'], X64);
  assert.equal(f.defaultAction, 'SCMP_ACT_ERRNO');
  assert.equal(f.defaultErrnoRet, 38);
  assert.deepEqual(f.architectures, ['SCMP_ARCH_X86_64'], 'the native architecture only');
  assert.equal(allowed(f, 'read').length, 1);
  assert.deepEqual(allowed(f, 'personality')[0]!.args, [{ index: 0, value: 8, op: 'SCMP_CMP_EQ' }]);
  assert.equal(allowed(f, 'arch_prctl').length, 1, 'amd64 rule kept');
  assert.equal(allowed(f, 'arm_fadvise64_64').length, 0, 'arm rule dropped');
  assert.equal(allowed(f, 'chroot').length, 1, 'the cap it holds');
  assert.equal(refusal(f, 'chroot'), undefined, 'its exclude applies');
  assert.equal(allowed(f, 'bpf').length, 0, 'a cap it lacks');
  assert.equal(allowed(f, 'newer').length, 0, 'kernel older than minKernel');
  assert.equal(allowed(f, 'older').length, 0, 'kernel at or past excludes.minKernel');
  assert.equal(refusal(ociSeccomp(PROFILE, [], X64), 'chroot')?.errnoRet, 1, 'without the cap: refused');
  assert.deepEqual(ociSeccomp(PROFILE, [], { arch: 'arm64', kernel: '6.1' }).architectures, ['SCMP_ARCH_AARCH64']);
  assert.throws(() => ociSeccomp(PROFILE, [], { arch: 'ppc64', kernel: '6.1' }), { code: 'Unavailable' });
});

test('seccomp: without CAP_SYS_ADMIN no namespace, mount or keyring, whatever the base profile allows; clone only without CLONE_NEW* flags, clone3 ENOSYS', () => {
  const f = ociSeccomp(PROFILE, DEFAULT_CAPABILITIES, X64);
  for (const n of ['unshare', 'mount', 'setns', 'keyctl', 'clone3']) assert.equal(allowed(f, n).length, 0, `${n} not allowed`);
  for (const n of ['unshare', 'mount', 'setns', 'umount2', 'pivot_root', 'fsopen', 'keyctl', 'add_key', 'request_key']) assert.equal(refusal(f, n)?.errnoRet, 1, `${n}: EPERM`);
  assert.equal(refusal(f, 'clone3')?.errnoRet, 38, 'clone3: ENOSYS, so libc falls back to clone');
  const clone = allowed(f, 'clone');
  assert.equal(clone.length, 1);
  assert.deepEqual(clone[0]!.args, [{ index: 0, value: 0x7e020080, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }]);
  // with CAP_SYS_ADMIN the base profile's word stands (the keyring aside)
  const admin = ociSeccomp(PROFILE, [...DEFAULT_CAPABILITIES, 'CAP_SYS_ADMIN'], X64);
  assert.equal(allowed(admin, 'unshare').length, 1);
  assert.equal(allowed(admin, 'clone')[0]!.args, undefined);
  assert.equal(allowed(admin, 'bpf').length, 1);
  assert.equal(refusal(admin, 'keyctl')?.errnoRet, 1);
});

test('seccomp: the host\'s profile folds; a missing or malformed file is refused with what to do; "unconfined" is no filter', async (t) => {
  if (existsSync(DEFAULT_SECCOMP_PROFILE)) {
    const f = ociSeccomp(await readSeccompProfile(DEFAULT_SECCOMP_PROFILE), DEFAULT_CAPABILITIES);
    assert.ok(allowed(f, 'read').length && allowed(f, 'execve').length && allowed(f, 'exit_group').length);
    assert.equal(allowed(f, 'unshare').length, 0);
  } else t.diagnostic(`${DEFAULT_SECCOMP_PROFILE} missing: the host's profile not checked`);
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-seccomp-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await assert.rejects(readSeccompProfile(path.join(dir, 'none.json')), { code: 'Unavailable', message: /golang-github-containers-common.*NIMBUS_SECCOMP_PROFILE/ });
  await writeFile(path.join(dir, 'bad.json'), '{"syscalls": 3}');
  await assert.rejects(readSeccompProfile(path.join(dir, 'bad.json')), { code: 'InvalidArgument' });
  assert.equal(await seccompLoader('unconfined')(), undefined);
  // a failed read is not kept: the file written afterwards is read by the next call
  const later = path.join(dir, 'later.json');
  const load = seccompLoader(later);
  await assert.rejects(load(), { code: 'Unavailable' });
  await writeFile(later, JSON.stringify(PROFILE));
  const filter = await load();
  assert.equal(filter!(DEFAULT_CAPABILITIES), filter!([...DEFAULT_CAPABILITIES].reverse()), 'folded once per set of capabilities');
});
