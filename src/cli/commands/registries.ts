/** nimbus registry login|ls|logout: the project's registry credentials (docs/registries.md). */
import { UsageError, type CommandSpec } from '../args.js';
import { ago, render, table } from '../output.js';
import type { RegistryLoginView } from '../../control/registries/registry-credentials.js';
import { readPassword } from './identity.js';
import { clientOf } from './shared.js';

export const registryCommands: CommandSpec[] = [
  {
    name: 'registry login', usage: 'SERVER', summary: "Check credentials against a registry and keep them for the project's pulls from it", minArgs: 1, maxArgs: 1,
    options: [
      { name: 'username', short: 'u', type: 'string', value: 'USER', description: 'User name at the registry (required)' },
      { name: 'password-stdin', type: 'boolean', description: 'Read the password (or token) from stdin' },
    ],
    async run({ args, opts, global }) {
      const username = opts.username as string | undefined;
      if (!username) throw new UsageError('registry login needs -u USER');
      const password = await readPassword(opts['password-stdin'] === true);
      if (!password) throw new UsageError('an empty password');
      const r = await clientOf(global).json<RegistryLoginView>('POST', '/registries', { server: args[0], username, password });
      process.stdout.write(`Login Succeeded: ${r.username} at ${r.server}, kept for the project's pulls\n`);
      return 0;
    },
  },
  {
    name: 'registry ls', usage: '', summary: 'The registries the project keeps credentials for (server and user; never the password)', maxArgs: 0, options: [],
    async run({ global }) {
      const rows = await clientOf(global).json<RegistryLoginView[]>('GET', '/registries');
      return render(global, rows, (rs) => table(['SERVER', 'USERNAME', 'UPDATED', 'BY'], rs.map((r) => [r.server, r.username, ago(r.updatedAt), r.updatedBy])));
    },
  },
  {
    name: 'registry logout', usage: 'SERVER', summary: "Forget the project's credentials for a registry", minArgs: 1, maxArgs: 1, options: [],
    async run({ args, global }) {
      await clientOf(global).json('DELETE', `/registries/${encodeURIComponent(args[0]!)}`);
      process.stdout.write(`Removed the credentials for ${args[0]}\n`);
      return 0;
    },
  },
];
