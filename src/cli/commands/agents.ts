/** `nimbus agent ...`: the hosts of this control plane (/agents; `nimbus host` manages them). Agents register themselves (nimbusd agent). */
import { InvalidArgument } from '../../core/errors.js';
import { OUTPUT_OPTION, type CommandSpec } from '../args.js';
import { ago, render, table } from '../output.js';
import { clientOf, eachArg } from './shared.js';

export interface AgentRow {
  name: string;
  local: boolean;
  url?: string;
  registeredAt?: string;
  state: 'up' | 'down' | 'unknown';
  reason?: string;
  disabled?: boolean;
  hostname?: string;
  cpus?: number;
  memoryBytes?: number;
  accelerator?: string;
  vms: number;
}

export function agentTable(list: AgentRow[]): string {
  return table(
    ['NAME', 'STATE', 'ADDRESS', 'HOSTNAME', 'CPUS', 'MEMORY', 'ACCEL', 'VMS', 'REGISTERED'],
    list.map((a) => [
      a.name,
      `${a.state}${a.reason ? ` (${a.reason})` : ''}${a.disabled ? ', disabled' : ''}`,
      a.local ? 'embedded' : (a.url ?? '-'),
      a.hostname ?? '-',
      a.cpus !== undefined ? String(a.cpus) : '-',
      a.memoryBytes !== undefined ? `${(a.memoryBytes / 1024 ** 3).toFixed(1)}GiB` : '-',
      a.accelerator ?? '-',
      String(a.vms),
      a.registeredAt ? ago(a.registeredAt) : '-',
    ]),
  );
}

/** "90s", "10m", "1h" or plain seconds, into seconds. */
export function parseTtl(s: string): number {
  const m = /^([0-9]{1,6})(s|m|h)?$/.exec(s.trim());
  if (!m) throw new InvalidArgument(`--ttl must be a duration such as 90s, 10m or 1h, got "${s}"`);
  return Number(m[1]) * ({ s: 1, m: 60, h: 3600 } as const)[(m[2] ?? 's') as 's' | 'm' | 'h'];
}

export const agentCommands: CommandSpec[] = [
  {
    name: 'agent join-token', usage: '', maxArgs: 0,
    summary: 'A one-time token a new agent joins with over TCP (nimbusd agent --join-token TOKEN); shown once',
    options: [{ name: 'ttl', type: 'string', value: 'DURATION', description: 'How long it can be used: 90s, 10m, 1h (default 10m, at most 24h)' }, OUTPUT_OPTION],
    async run({ opts, global }) {
      const ttl = typeof opts.ttl === 'string' ? parseTtl(opts.ttl) : undefined;
      const r = await clientOf(global).json<{ token: string; id: string; expiresAt: string }>('POST', '/agents/join-tokens', ttl !== undefined ? { ttlSeconds: ttl } : {});
      // the token alone on stdout, so that $(nimbus agent join-token) is it; the rest is for the reader
      return render(global, r, (t) => {
        process.stderr.write(`join token ${t.id}, usable once until ${t.expiresAt}:\n  nimbusd agent --name NAME --listen HOST:PORT --control-plane URL --join-token TOKEN\n`);
        return `${t.token}\n`;
      });
    },
  },
  {
    name: 'agent ls', usage: '', summary: 'List the agents (hosts): the embedded one and those registered by nimbusd agent', maxArgs: 0,
    options: [OUTPUT_OPTION],
    async run({ global }) {
      return render(global, await clientOf(global).json<AgentRow[]>('GET', '/agents'), agentTable);
    },
  },
  {
    name: 'agent rm', usage: 'AGENT [AGENT...]', summary: 'Forget registered agents (refused while containers or VMs are recorded on them; as host rm)', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (name) => {
        await client.json('DELETE', `/agents/${encodeURIComponent(name)}`);
      });
    },
  },
];
