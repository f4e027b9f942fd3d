/**
 * System call numbers for the small perl helpers that make the calls Node lacks (mknodat, the
 * *xattr family, openat walks: layers/special-ops.ts, move/tree-xattrs.ts). Undefined on an
 * architecture not listed here: the callers refuse or fall back.
 */
export interface SyscallNumbers {
  openat: number;
  close: number;
  mknodat: number;
  setxattr: number;
  lsetxattr: number;
  lgetxattr: number;
  llistxattr: number;
}

const GENERIC: SyscallNumbers = { openat: 56, close: 57, mknodat: 33, setxattr: 5, lsetxattr: 6, lgetxattr: 9, llistxattr: 12 };

const BY_ARCH: Partial<Record<string, SyscallNumbers>> = {
  x64: { openat: 257, close: 3, mknodat: 259, setxattr: 188, lsetxattr: 189, lgetxattr: 192, llistxattr: 195 },
  arm64: GENERIC,
  riscv64: GENERIC,
};

/** This machine's numbers, or undefined. */
export const SYSCALLS: SyscallNumbers | undefined = BY_ARCH[process.arch];
