/**
 * The extended attributes that travel with an exported tree (tree-tar.ts): read without following
 * a symlink, and within a bound.
 *
 * The tree is a tenant's and may be changing while it is read (commit --pause=false reads a
 * running container's upper directory): a walk by path (getfattr -R) can be sent through a
 * directory swapped for a symlink to a host path and read the attributes of host files. So a tiny
 * perl helper (perl-base is Essential on Debian; special-ops.ts's kind) walks from the root by
 * descriptors: each directory opened with openat(O_DIRECTORY|O_NOFOLLOW) from its parent's, each
 * entry's attributes read by name in its parent (llistxattr/lgetxattr on /proc/self/fd/N/name,
 * which does not follow the name). A tree swapped meanwhile only mixes up the tenant's own.
 *
 * The output is read as it comes, against a budget: a tenant can hang kilobytes on every file
 * of its tree, and getfattr's whole output held as one string (past V8's ~512 MiB) took the agent
 * down with an uncaught exception.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { ResourceExhausted, Unavailable } from '../../core/errors.js';
import { SYSCALLS } from '../syscalls.js';

/** What the attributes a tree carries may take in memory (names, values, paths, ~256 B of bookkeeping each). */
export const MAX_TREE_XATTR_BYTES = 64 * 1024 * 1024;
const PER_ATTR_OVERHEAD = 256;

const HELPER = String.raw`
use strict; use warnings; use Fcntl qw(O_RDONLY O_DIRECTORY O_NOFOLLOW);
my ($root, $pattern, $openat, $close, $llistxattr, $lgetxattr) = @ARGV;
my $re = qr/$pattern/;
my $walk = O_RDONLY | O_DIRECTORY | O_NOFOLLOW;
# path's attributes whose names match, one line each: hex(rel) hex(name) hex(value)
sub attrs {
  my ($path, $rel) = @_;
  my $list = "\0" x 65536;
  my $n = syscall($llistxattr + 0, $path, $list, 65536);
  return if $n <= 0;
  for my $name (split /\0/, substr($list, 0, $n)) {
    next unless $name =~ $re;
    my $v = "\0" x 65536;
    my $m = syscall($lgetxattr + 0, $path, $name, $v, 65536);
    next if $m < 0;
    print unpack('H*', $rel), ' ', unpack('H*', $name), ' ', unpack('H*', substr($v, 0, $m)), "\n";
  }
}
sub walk {
  my ($fd, $rel) = @_;
  attrs("/proc/self/fd/$fd/.", $rel);
  opendir(my $dh, "/proc/self/fd/$fd") or die "opendir: $!\n";
  my @names = grep { $_ ne '.' && $_ ne '..' } readdir($dh);
  closedir($dh);
  for my $name (@names) {
    my $p = "/proc/self/fd/$fd/$name";
    my $crel = $rel eq '' ? $name : "$rel/$name";
    # gone or replaced meanwhile: the export's own walk answers for what is there
    lstat($p) or next;
    if (-d _) {
      my $c = syscall($openat + 0, $fd + 0, $name, $walk + 0);
      next if $c < 0;
      walk($c, $crel);
      syscall($close + 0, $c + 0);
    } else {
      attrs($p, $crel);
    }
  }
}
lstat($root) or die "lstat: $!\n";
if (-d _) {
  sysopen(my $rh, $root, $walk) or die "open: $!\n";
  walk(fileno($rh), '');
} else {
  attrs($root, '');
}
`;

/**
 * The attributes whose names match pattern (a regular expression) of every entry under root, by
 * path relative to root ('' for root itself). ResourceExhausted past MAX_TREE_XATTR_BYTES.
 */
export async function readTreeXattrs(root: string, pattern: string, maxBytes = MAX_TREE_XATTR_BYTES): Promise<Map<string, Map<string, Buffer>>> {
  const sc = SYSCALLS;
  if (!sc) throw new Unavailable(`reading a tree's extended attributes is not supported on ${process.arch}`);
  const child = spawn('perl', ['-e', HELPER, root, pattern, String(sc.openat), String(sc.close), String(sc.llistxattr), String(sc.lgetxattr)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<{ code: number | null; error?: Error }>((resolve) => {
    child.once('error', (error) => resolve({ code: null, error }));
    child.once('close', (code) => resolve({ code }));
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-1000)));
  const out = new Map<string, Map<string, Buffer>>();
  let used = 0;
  let over = false;
  for await (const line of createInterface({ input: child.stdout, crlfDelay: Infinity })) {
    const [relHex = '', nameHex = '', valueHex = ''] = line.split(' ');
    const rel = Buffer.from(relHex, 'hex').toString();
    const name = Buffer.from(nameHex, 'hex').toString();
    used += rel.length + name.length + valueHex.length / 2 + PER_ATTR_OVERHEAD;
    if (used > maxBytes) {
      over = true;
      child.kill('SIGKILL');
      break;
    }
    let attrs = out.get(rel);
    if (!attrs) out.set(rel, (attrs = new Map()));
    attrs.set(name, Buffer.from(valueHex, 'hex'));
  }
  const end = await exited;
  if (over) throw new ResourceExhausted(`the tree's extended attributes take more than ${maxBytes / 1024 / 1024} MiB: too many to carry`, { maxBytes });
  if (end.error) throw new Unavailable(`reading extended attributes needs perl: ${String(end.error)}`);
  // the helper prints errno text, never a path
  if (end.code !== 0) throw new Unavailable(`reading extended attributes failed (exit ${end.code}): ${stderr.trim()}`);
  return out;
}
