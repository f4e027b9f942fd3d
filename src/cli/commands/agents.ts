/** `nimbus agent ...`: the hosts of this control plane (/agents). Agents register themselves (nimbusd agent). */
import { OUTPUT_OPTION, type CommandSpec } from '../args.js';
import { ago, render, table } from '../output.js';
import { clientOf, eachArg } from './shared.js';

export interface AgentRow {
  name: string;
  local: boolean;
  url?: string;
  registeredAt?: string;
  state: 'up' | 'down';
  reason?: string;
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
      a.state === 'up' ? 'up' : `down (${a.reason ?? '?'})`,
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

export const agentCommands: CommandSpec[] = [
  {
    name: 'agent ls', usage: '', summary: 'List the agents (hosts): the embedded one and those registered by nimbusd agent', maxArgs: 0,
    options: [OUTPUT_OPTION],
    async run({ global }) {
      return render(global, await clientOf(global).json<AgentRow[]>('GET', '/agents'), agentTable);
    },
  },
  {
    name: 'agent rm', usage: 'AGENT [AGENT...]', summary: 'Forget registered agents (refused while VMs are on them)', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (name) => {
        await client.json('DELETE', `/agents/${encodeURIComponent(name)}`);
      });
    },
  },
];
