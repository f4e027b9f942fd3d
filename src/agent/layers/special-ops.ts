/**
 * What Node cannot do for a layer: mknod(2) (overlay whiteouts, fifos) and setxattr(2) (opaque
 * directories, `user.*` and `security.capability` from PAX headers). The extractor collects them
 * and applies them at the end of the layer, in one batch, through a tiny perl helper calling the
 * system calls directly (perl-base is Essential in Debian); without perl, one `mknod`/`mkfifo`/
 * `setfattr` process per operation.
 *
 * Every operation names its target relative to the layer's root, and the target is reached from a
 * descriptor of that root without following a symlink in any component: the helper opens each
 * parent with openat(O_DIRECTORY|O_NOFOLLOW) and acts on the last component through the parent's
 * descriptor (mknodat; lsetxattr on `/proc/self/fd/N/name`, which does not follow the name).
 * Operations are deferred, so the tree may have changed since each was queued (a later entry can
 * replace a directory with a symlink to a host path); the extractor drops an operation whose
 * target it replaced, and this walk is what makes a missed case fail instead of writing outside
 * the root.
 */
import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgument, Unavailable } from '../../core/errors.js';
import { run } from '../../core/exec.js';
import { SYSCALLS } from '../syscalls.js';

/** A node to create: an overlay whiteout (a 0:0 character device) or a fifo. */
export interface NodeOp {
  kind: 'whiteout' | 'fifo';
  /** Its path relative to the layer's root (normalised components joined by `/`). */
  rel: string;
  /** The tar entry that asked for it, for messages. */
  entry: string;
  mode: number;
}

/** An extended attribute to set on a file or directory the layer made (rel '' is the root). */
export interface XattrOp {
  rel: string;
  entry: string;
  name: string;
  value: Buffer;
}

const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;

const PERL_HELPER = String.raw`
use strict; use warnings; use Fcntl qw(O_RDONLY O_DIRECTORY O_NOFOLLOW);
my ($root, $mknodat, $openat, $close, $setxattr, $lsetxattr) = @ARGV;
sysopen(my $rh, $root, O_RDONLY | O_DIRECTORY) or die "root: $!\n";
my $rootfd = fileno($rh);
my $walk = O_RDONLY | O_DIRECTORY | O_NOFOLLOW;
# the directory holding rel's last component, reached from the root without following a symlink
sub parent {
  my @c = split m{/}, $_[0];
  my $base = pop @c;
  my $fd = $rootfd;
  for my $comp (@c) {
    my $next = syscall($openat + 0, $fd + 0, $comp, $walk + 0);
    my $err = $!;
    syscall($close + 0, $fd + 0) if $fd != $rootfd;
    if ($next < 0) { $! = $err; return (-1, $base); }
    $fd = $next;
  }
  return ($fd, $base);
}
while (my $line = <STDIN>) {
  chomp $line;
  my ($op, $relhex, @f) = split / /, $line, -1;
  my $rel = pack('H*', $relhex);
  my $r = -1;
  my ($fd, $base) = $rel eq '' ? ($rootfd, undef) : parent($rel);
  if ($fd >= 0) {
    if ($op eq 'N') {
      $r = syscall($mknodat + 0, $fd + 0, $base, $f[0] + 0, 0);
    } elsif ($op eq 'X') {
      my ($n, $v) = map { pack('H*', $_) } @f;
      # the root through its own descriptor; anything else by name in its parent, not followed
      $r = defined $base
        ? syscall($lsetxattr + 0, "/proc/self/fd/$fd/$base", $n, $v, length($v) + 0, 0)
        : syscall($setxattr + 0, "/proc/self/fd/$fd", $n, $v, length($v) + 0, 0);
    } else { die "bad op $op\n" }
    my $err = $!;
    syscall($close + 0, $fd + 0) if $fd != $rootfd;
    $! = $err;
  }
  if ($r != 0) { print STDERR "$op $relhex: $!\n"; exit 3; }
}
`;

let perlOk: Promise<boolean> | undefined;
function havePerl(): Promise<boolean> {
  perlOk ??= run('perl', ['-MFcntl', '-e', 'exit 0']).then(
    (r) => r.code === 0 && SYSCALLS !== undefined,
    () => false,
  );
  return perlOk;
}

/** Ask ahead whether the helper can run (probed once per process). */
export function probeSpecialOps(): Promise<boolean> {
  return havePerl();
}

async function programExists(file: string, args: string[]): Promise<boolean> {
  try {
    await run(file, args);
    return true;
  } catch {
    return false;
  }
}

function refuse(entry: string, reason: string): never {
  throw new InvalidArgument(`layer entry ${JSON.stringify(entry)}: ${reason}`, { entry, reason });
}

const hex = (s: string | Buffer) => Buffer.from(s).toString('hex');

/** The errno text the helper printed, as a reason (never the host path). */
function reasonOf(stderr: string): string {
  const why = stderr.trim().split(': ').pop() ?? '';
  return /symbolic links|Not a directory/.test(why) ? `a parent is not a directory of this layer (${why}); refusing to follow it` : why;
}

/** Apply the nodes, then the xattrs, under root (a real directory, realpath'd). */
export async function applySpecialOps(root: string, nodes: NodeOp[], xattrs: XattrOp[]): Promise<void> {
  if (nodes.length === 0 && xattrs.length === 0) return;
  if (await havePerl()) {
    const sc = SYSCALLS!;
    const lines = [
      ...nodes.map((n) => `N ${hex(n.rel)} ${n.kind === 'whiteout' ? S_IFCHR : S_IFIFO | (n.mode & 0o777)}`),
      ...xattrs.map((x) => `X ${hex(x.rel)} ${hex(x.name)} ${hex(x.value)}`),
    ];
    const r = await run('perl', ['-e', PERL_HELPER, root, String(sc.mknodat), String(sc.openat), String(sc.close), String(sc.setxattr), String(sc.lsetxattr)], {
      input: lines.join('\n') + '\n',
    });
    if (r.code !== 0) {
      // stderr is "<op> <hex rel>: <errno text>"
      const [op, bad] = r.stderr.trim().split(/[ :]/);
      const which = (op === 'N' ? nodes : op === 'X' ? xattrs : []).find((o) => bad !== undefined && hex(o.rel) === bad);
      throw new InvalidArgument(`layer entry ${JSON.stringify(which?.entry ?? '?')}: could not create node or xattr: ${reasonOf(r.stderr)}`, { entry: which?.entry });
    }
    return;
  }
  // One process per operation, by path: each parent is checked first (nothing else writes in the
  // tree meanwhile: a layer's own directory, or a container frozen for its copy).
  for (const n of nodes) {
    const abs = await reachable(root, n.rel, n.entry);
    const r =
      n.kind === 'whiteout'
        ? await run('mknod', ['-m', '0', '--', abs, 'c', '0', '0'])
        : await run('mkfifo', ['-m', (n.mode & 0o777).toString(8), '--', abs]);
    if (r.code !== 0) refuse(n.entry, `could not create ${n.kind} (exit ${r.code})`); // its stderr names the host path
  }
  if (xattrs.length > 0 && !(await programExists('setfattr', ['--version']))) {
    throw new Unavailable('applying xattrs (overlay opaque directories) needs perl or setfattr (Debian package attr)');
  }
  for (const x of xattrs) {
    const abs = await reachable(root, x.rel, x.entry);
    const r = await run('setfattr', ['-h', '-n', x.name, '-v', `0x${x.value.toString('hex')}`, '--', abs]);
    if (r.code !== 0) refuse(x.entry, `could not set xattr ${x.name} (exit ${r.code})`);
  }
}

/** rel's absolute path, once every parent under root is checked to be a real directory. */
async function reachable(root: string, rel: string, entry: string): Promise<string> {
  const comps = rel === '' ? [] : rel.split('/');
  for (let i = 1; i < comps.length; i++) {
    const st = await lstat(path.join(root, ...comps.slice(0, i))).catch(() => undefined);
    if (!st?.isDirectory()) refuse(entry, 'a parent is not a directory of this layer; refusing to follow it');
  }
  return comps.length === 0 ? root : path.join(root, ...comps);
}
