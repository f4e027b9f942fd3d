/** login/logout, users, API keys, projects and roles. */
import { UsageError, type CommandSpec, type GlobalOptions } from '../args.js';
import { ApiError } from '../client.js';
import { removeStoredToken, storeToken } from '../credentials.js';
import { ago, printJson, render, table } from '../output.js';
import { clientOf } from './shared.js';

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

/** A password from stdin (--password-stdin, or stdin not a terminal), else asked for without echo. */
export async function readPassword(fromStdin: boolean, prompt = 'Password: '): Promise<string> {
  if (fromStdin || !process.stdin.isTTY) return readStdin();
  process.stderr.write(prompt);
  process.stdin.setRawMode(true);
  process.stdin.resume();
  let pw = '';
  try {
    for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return pw;
        if (ch === '\u0003') throw new UsageError('interrupted');
        pw = ch === '\u007f' ? pw.slice(0, -1) : pw + ch;
      }
    }
    return pw;
  } finally {
    process.stdin.setRawMode(false);
    process.stdin.pause();
    process.stderr.write('\n');
  }
}

interface Project { id: string; name: string; path: string; parentId: string | null; createdAt: string }
interface Grant { user: string; project: string; role: string; inheritedFrom?: string | null }

/** The project a command acts on: --project, else the caller's default (asked of the daemon). */
export async function currentProject(global: GlobalOptions): Promise<string> {
  if (global.project) return global.project;
  if (process.env.NIMBUS_PROJECT) return process.env.NIMBUS_PROJECT;
  const me = await clientOf(global).json<{ defaultProject: string | null }>('GET', '/auth/whoami');
  if (!me.defaultProject) throw new UsageError('no project given and you have no default project: use --project P');
  return me.defaultProject;
}

const enc = encodeURIComponent;

export const identityCommands: CommandSpec[] = [
  {
    name: 'login', usage: '[USER]', summary: 'Log in and store the session token (0600) for later commands', maxArgs: 1,
    options: [
      { name: 'user', short: 'u', type: 'string', value: 'USER', description: 'User name (default admin)' },
      { name: 'password-stdin', type: 'boolean', description: 'Read the password from stdin' },
      { name: 'ttl', type: 'number', integer: true, value: 'SECS', description: 'Session lifetime (default 12 hours)' },
    ],
    async run({ args, opts, global }) {
      const user = args[0] ?? (opts.user as string | undefined) ?? 'admin';
      const password = await readPassword(opts['password-stdin'] === true);
      const r = await clientOf(global).json<{ token: string; expiresAt: string }>('POST', '/auth/login', {
        user, password, ...(opts.ttl !== undefined ? { ttlSeconds: opts.ttl } : {}),
      });
      const file = storeToken(r.token);
      process.stdout.write(`Login succeeded: ${user} until ${r.expiresAt} (token in ${file})\n`);
      return 0;
    },
  },
  {
    name: 'logout', usage: '', summary: 'Revoke the stored session and delete it', maxArgs: 0, options: [],
    async run({ global }) {
      await clientOf(global).json('POST', '/auth/logout').catch((e: unknown) => {
        if (!(e instanceof ApiError && e.status === 401)) throw e; // already expired or revoked
      });
      process.stdout.write(removeStoredToken() ? 'Logged out\n' : 'Not logged in\n');
      return 0;
    },
  },
  {
    name: 'whoami', usage: '', summary: 'Who the daemon takes you for, your default project and roles', maxArgs: 0, options: [],
    async run({ global }) {
      const me = await clientOf(global).json<{ user: string; systemAdmin: boolean; via: string; defaultProject: string | null; roles: { project: string; role: string }[] }>('GET', '/auth/whoami');
      return render(global, me, (m) =>
        `${m.user}${m.systemAdmin ? ' (system administrator)' : ''} via ${m.via}; default project ${m.defaultProject ?? '(none)'}\n` +
        m.roles.map((r) => `  ${r.role} on ${r.project}\n`).join(''));
    },
  },
  {
    name: 'user create', usage: 'NAME', summary: 'Create a user (password from stdin or asked for)', minArgs: 1, maxArgs: 1,
    options: [
      { name: 'password-stdin', type: 'boolean', description: 'Read the password from stdin' },
      { name: 'admin', type: 'boolean', description: 'Make the user a system administrator' },
      { name: 'default-project', type: 'string', value: 'P', description: 'Default project (else their first granted project)' },
    ],
    async run({ args, opts, global }) {
      const password = await readPassword(opts['password-stdin'] === true);
      const u = await clientOf(global).json<{ name: string }>('POST', '/users', {
        name: args[0], password, systemAdmin: opts.admin === true,
        ...(opts['default-project'] ? { defaultProject: opts['default-project'] } : {}),
      });
      return render(global, u, (x) => `${x.name}\n`);
    },
  },
  {
    name: 'user ls', usage: '', summary: 'List users', maxArgs: 0, options: [],
    async run({ global }) {
      const users = await clientOf(global).json<{ name: string; systemAdmin: boolean; defaultProject: string | null; createdAt: string }[]>('GET', '/users');
      return render(global, users, (us) => table(['NAME', 'ADMIN', 'DEFAULT PROJECT', 'CREATED'], us.map((u) => [u.name, u.systemAdmin ? 'yes' : '', u.defaultProject ?? '', ago(u.createdAt)])));
    },
  },
  {
    name: 'user rm', usage: 'NAME...', summary: 'Remove users with their sessions, keys and roles', minArgs: 1, options: [],
    async run({ args, global }) {
      for (const n of args) {
        await clientOf(global).json('DELETE', `/users/${enc(n)}`);
        process.stdout.write(`${n}\n`);
      }
      return 0;
    },
  },
  {
    name: 'apikey create', usage: 'NAME', summary: 'Create an API key for automation (printed once)', minArgs: 1, maxArgs: 1,
    options: [{ name: 'expires', type: 'number', integer: true, value: 'SECS', description: 'Expire after SECS seconds (default never)' }],
    async run({ args, opts, global }) {
      const k = await clientOf(global).json<{ key: string }>('POST', '/apikeys', { name: args[0], ...(opts.expires !== undefined ? { expiresInSeconds: opts.expires } : {}) });
      return render(global, k, (x) => `${x.key}\n`);
    },
  },
  {
    name: 'apikey ls', usage: '', summary: 'Your API keys (names only; keys are never shown again)', maxArgs: 0, options: [],
    async run({ global }) {
      const keys = await clientOf(global).json<{ name: string; createdAt: string; expiresAt: string | null }[]>('GET', '/apikeys');
      return render(global, keys, (ks) => table(['NAME', 'CREATED', 'EXPIRES'], ks.map((k) => [k.name, ago(k.createdAt), k.expiresAt ?? 'never'])));
    },
  },
  {
    name: 'apikey rm', usage: 'NAME...', summary: 'Revoke API keys', minArgs: 1, options: [],
    async run({ args, global }) {
      for (const n of args) {
        await clientOf(global).json('DELETE', `/apikeys/${enc(n)}`);
        process.stdout.write(`${n}\n`);
      }
      return 0;
    },
  },
  {
    name: 'project create', usage: 'NAME', summary: 'Create a project (at the root, or under --parent)', minArgs: 1, maxArgs: 1,
    options: [{ name: 'parent', type: 'string', value: 'P', description: 'Parent project (id, path or name)' }],
    async run({ args, opts, global }) {
      const p = await clientOf({ ...global, project: undefined } as GlobalOptions).json<Project>('POST', '/projects', { name: args[0], ...(opts.parent ? { parent: opts.parent } : {}) });
      return render(global, p, (x) => `${x.path}\n`);
    },
  },
  {
    name: 'project ls', usage: '', summary: 'The projects you can read, as a tree', maxArgs: 0, options: [],
    async run({ global }) {
      const ps = await clientOf(global).json<Project[]>('GET', '/projects');
      // Sorted by path, so parents come first. Indent under visible parents; a project whose parent
      // the caller cannot see starts a tree of its own, shown by its full path.
      const depth = new Map<string, number>();
      return render(global, ps, (list) => table(['PROJECT', 'ID', 'CREATED'], list.map((p) => {
        const parentDepth = p.parentId === null ? undefined : depth.get(p.parentId);
        depth.set(p.id, parentDepth === undefined ? 0 : parentDepth + 1);
        const label = parentDepth === undefined ? p.path : `${'  '.repeat(parentDepth + 1)}${p.name}`;
        return [label, p.id.slice(0, 12), ago(p.createdAt)];
      })));
    },
  },
  {
    name: 'project inspect', usage: 'PROJECT', summary: 'A project: children, resource counts, roles', minArgs: 1, maxArgs: 1, options: [],
    async run({ args, global }) {
      const p = await clientOf(global).json('GET', `/projects/${enc(args[0]!)}`);
      printJson(p);
      return 0;
    },
  },
  {
    name: 'project rm', usage: 'PROJECT...', summary: 'Remove projects (refused while they have children or resources)', minArgs: 1, options: [],
    async run({ args, global }) {
      for (const p of args) {
        await clientOf(global).json('DELETE', `/projects/${enc(p)}`);
        process.stdout.write(`${p}\n`);
      }
      return 0;
    },
  },
  {
    name: 'role grant', usage: 'USER ROLE', summary: 'Grant USER a role (reader, member, admin) on --project and its descendants', minArgs: 2, maxArgs: 2, options: [],
    async run({ args, global }) {
      if (!['reader', 'member', 'admin'].includes(args[1]!)) throw new UsageError(`ROLE must be reader, member or admin, got "${args[1]}"`);
      const project = await currentProject(global);
      const g = await clientOf(global).json<Grant>('PUT', `/projects/${enc(project)}/roles/${enc(args[0]!)}`, { role: args[1] });
      return render(global, g, (x) => `${x.user} is ${x.role} on ${x.project}\n`);
    },
  },
  {
    name: 'role revoke', usage: 'USER', summary: "Revoke USER's role on --project (roles inherited from ancestors stay)", minArgs: 1, maxArgs: 1, options: [],
    async run({ args, global }) {
      const project = await currentProject(global);
      await clientOf(global).json('DELETE', `/projects/${enc(project)}/roles/${enc(args[0]!)}`);
      process.stdout.write(`${args[0]}\n`);
      return 0;
    },
  },
  {
    name: 'role ls', usage: '', summary: 'Who holds which role on --project, directly or inherited', maxArgs: 0, options: [],
    async run({ global }) {
      const project = await currentProject(global);
      const gs = await clientOf(global).json<Grant[]>('GET', `/projects/${enc(project)}/roles`);
      return render(global, gs, (list) => table(['USER', 'ROLE', 'ON', 'INHERITED'], list.map((g) => [g.user, g.role, g.project, g.inheritedFrom ? 'yes' : ''])));
    },
  },
];
