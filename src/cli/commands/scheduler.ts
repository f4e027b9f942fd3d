/** `nimbus group create|ls|show|rm` (server groups) and `nimbus scheduler explain`. */
import { OUTPUT_OPTION, UsageError, parseLabels, parseSize, type CommandSpec } from '../args.js';
import { ago, printJson, render, short, table } from '../output.js';
import { clientOf, eachArg } from './shared.js';

interface ServerGroup {
  id: string;
  projectId: string;
  name: string;
  policy: string;
  createdAt: string;
  members?: string[];
}

interface Verdict {
  host: string;
  rejectedBy?: { filter: string; reason: string };
  weight?: number;
  weighers?: Record<string, number>;
}

interface ExplainResult {
  fits: boolean;
  message: string;
  hosts: number;
  rejected: Record<string, number>;
  chosen?: string;
  verdicts?: Verdict[];
}

const enc = encodeURIComponent;

/** An explanation as a person reads it: each host's verdict and weight (administrators), or the counts. */
export function explanationText(e: ExplainResult): string {
  if (!e.verdicts) return `${e.fits ? 'fits' : 'does not fit'}: ${e.message}\n`;
  const head = e.chosen !== undefined ? `would place on ${e.chosen}\n` : `no host can take it: ${e.message}\n`;
  const ranked = [...e.verdicts].sort((a, b) => (b.weight ?? -Infinity) - (a.weight ?? -Infinity));
  return head + table(['HOST', 'VERDICT', 'WEIGHT', 'WHY'], ranked.map((v) => [
    v.host,
    v.rejectedBy ? `rejected by ${v.rejectedBy.filter}` : v.host === e.chosen ? 'chosen' : 'passed',
    v.weight === undefined ? '' : v.weight.toFixed(3),
    v.rejectedBy?.reason ?? Object.entries(v.weighers ?? {}).map(([w, x]) => `${w} ${x.toFixed(2)}`).join(', '),
  ]));
}

export const schedulerCommands: CommandSpec[] = [
  {
    name: 'group create', usage: 'NAME', summary: 'Create a server group: instances run with --group follow its policy', minArgs: 1, maxArgs: 1,
    options: [
      { name: 'policy', type: 'string', value: 'POLICY', choices: ['affinity', 'anti-affinity'], description: 'anti-affinity: one member per host; affinity: all members on one host', default: 'anti-affinity' },
      { name: 'soft', type: 'boolean', description: 'Prefer the policy, never refuse a placement for it (Nova\'s soft-affinity, soft-anti-affinity)' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const policy = `${opts.soft ? 'soft-' : ''}${String(opts.policy ?? 'anti-affinity')}`;
      const g = await clientOf(global).json<ServerGroup>('POST', '/groups', { name: args[0], policy });
      return render(global, g, (x) => `${x.id}\n`);
    },
  },
  {
    name: 'group ls', usage: '', summary: 'List server groups', maxArgs: 0,
    options: [{ name: 'quiet', short: 'q', type: 'boolean', description: 'Only print group ids' }, OUTPUT_OPTION],
    async run({ opts, global }) {
      const list = await clientOf(global).json<ServerGroup[]>('GET', '/groups');
      if (opts.quiet && global.output !== 'json') {
        process.stdout.write(list.map((g) => `${short(g.id)}\n`).join(''));
        return 0;
      }
      return render(global, list, (l) => table(['GROUP ID', 'NAME', 'POLICY', 'CREATED'], l.map((g) => [short(g.id), g.name, g.policy, ago(g.createdAt)])));
    },
  },
  {
    name: 'group show', usage: 'GROUP [GROUP...]', summary: 'Show server groups and their members', minArgs: 1,
    options: [{ ...OUTPUT_OPTION, description: 'json (default) or table' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const out: ServerGroup[] = [];
      for (const a of args) out.push(await client.json<ServerGroup>('GET', `/groups/${enc(a)}`));
      if (opts.output === 'table') {
        for (const g of out) process.stdout.write(`${g.name} (${g.policy}): ${g.members?.length ? g.members.map(short).join(', ') : 'no members'}\n`);
      } else printJson(out);
      return 0;
    },
  },
  {
    name: 'group rm', usage: 'GROUP [GROUP...]', summary: 'Remove server groups (refused while they have members)', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (a) => {
        await client.json('DELETE', `/groups/${enc(a)}`);
      });
    },
  },
  {
    name: 'scheduler explain', usage: '', summary: 'What the scheduler would decide for a request, without placing anything', maxArgs: 0,
    options: [
      { name: 'kind', type: 'string', value: 'KIND', choices: ['container', 'vm', 'secure-container'], default: 'container', description: 'Instance kind' },
      { name: 'cpus', type: 'number', value: 'N', description: 'vCPUs to claim', default: 0 },
      { name: 'memory', short: 'm', type: 'string', value: 'SIZE', description: 'Memory to claim (512m, 2g)' },
      { name: 'disk', type: 'string', value: 'SIZE', description: 'Disk to claim' },
      { name: 'zone', type: 'string', value: 'ZONE', description: 'Availability zone' },
      { name: 'constraint', type: 'list', value: 'K=V', description: 'A host label that must match' },
      { name: 'group', type: 'string', value: 'GROUP', description: 'Server group (name or id)' },
      { name: 'host', type: 'string', value: 'HOST', description: 'Pin to a host (administrators)' },
      { name: 'runtime', type: 'string', value: 'RUNTIME', description: 'OCI runtime the host must offer' },
      { name: 'accelerator', type: 'string', value: 'ACCEL', description: 'Hypervisor accelerator (kvm, tcg)' },
      { name: 'architecture', type: 'string', value: 'ARCH', description: 'CPU architecture (amd64, arm64)' },
      OUTPUT_OPTION,
    ],
    async run({ opts, global }) {
      const cpus = Number(opts.cpus ?? 0);
      if (!(cpus >= 0)) throw new UsageError('--cpus must be a non-negative number');
      const optional = (name: string) => (opts[name] !== undefined ? { [name]: opts[name] } : {});
      const body = {
        kind: opts.kind ?? 'container', vcpus: cpus,
        memoryBytes: opts.memory !== undefined ? parseSize(String(opts.memory)) : 0,
        ...(opts.disk !== undefined ? { diskBytes: parseSize(String(opts.disk)) } : {}),
        ...((opts.constraint as string[] | undefined)?.length ? { constraints: parseLabels(opts.constraint as string[]) } : {}),
        ...optional('zone'), ...optional('group'), ...optional('host'), ...optional('runtime'), ...optional('accelerator'), ...optional('architecture'),
      };
      const e = await clientOf(global).json<ExplainResult>('POST', '/scheduler/explain', body);
      return render(global, e, explanationText);
    },
  },
];
