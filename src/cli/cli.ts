/**
 * nimbus: the command-line client of nimbusd. It talks only to the REST API.
 *
 * Exit codes (docker's conventions):
 *   0    success
 *   1    an error reported by the daemon or the client (message on stderr as
 *        "Error: <Code>: <message>"), including "cannot reach nimbusd"
 *   2    a usage error: unknown command or option, bad value, wrong argument count
 *   125  run/create failed before the container ran (daemon refused the create
 *        or the pull, or start failed)
 *   126/127  run: the command could not be invoked / was not found
 *   N    run, exec and start -a: the container's (or exec'd process's) own exit code
 */
import { errorText } from './errors.js';
import { OUTPUT_OPTION, PROJECT_OPTION, UsageError, helpText, parseArgs, usageLine, type CommandSpec, type GlobalOptions } from './args.js';
import { containerCommands } from './commands/containers.js';
import { cpCommands } from './commands/cp.js';
import { commitCommands } from './commands/commit.js';
import { imageCommands } from './commands/images.js';
import { buildCommands } from './commands/build.js';
import { systemCommands } from './commands/system.js';
import { quotaCommands } from './commands/quota.js';
import { identityCommands } from './commands/identity.js';
import { vmCommands } from './commands/vms.js';
import { agentCommands } from './commands/agents.js';
import { hostCommands } from './commands/hosts.js';
import { schedulerCommands } from './commands/scheduler.js';
import { networkCommands } from './commands/networks.js';
import { volumeCommands } from './commands/volumes.js';
import { dockerEnvCommands } from './commands/docker-env.js';
import { usageCommands } from './commands/usage.js';
import { moveCommands } from './commands/move.js';
import { registryCommands } from './commands/registries.js';

export { errorText };

/** Quota commands read --output but predate OUTPUT_OPTION: give them the option. */
const withOutput = (c: CommandSpec): CommandSpec => (c.options.some((o) => o.name === 'output') ? c : { ...c, options: [...c.options, OUTPUT_OPTION] });

/** Every command takes --project (global option, also accepted after the command) unless it declares its own. */
const withProject = (c: CommandSpec): CommandSpec => (c.options.some((o) => o.name === 'project') ? c : { ...c, options: [...c.options, PROJECT_OPTION] });

export const COMMANDS: CommandSpec[] = [
  ...containerCommands, ...cpCommands, ...commitCommands, ...networkCommands, ...volumeCommands, ...vmCommands, ...agentCommands, ...hostCommands, ...schedulerCommands, ...imageCommands, ...registryCommands, ...buildCommands, ...quotaCommands.map(withOutput), ...systemCommands, ...identityCommands, ...dockerEnvCommands, ...usageCommands, ...moveCommands,
].map(withProject);

/** Short forms, as docker has them. */
export const ALIASES: Record<string, string> = {
  pull: 'image pull',
  images: 'image ls',
  rmi: 'image rm',
  import: 'image import',
  'image build': 'build',
  'image list': 'image ls',
  'image remove': 'image rm',
  'container ls': 'ps',
  'container list': 'ps',
  'operation list': 'operation ls',
  console: 'vm console',
  'vm list': 'vm ls',
  'vm remove': 'vm rm',
  'network list': 'network ls',
  'network remove': 'network rm',
};

export function topHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'Usage: nimbus [--socket PATH | --host tcp://HOST:PORT] [--project P] [-o table|json] COMMAND [OPTIONS] [ARGS]',
    '',
    "The client of nimbusd. Run 'nimbus COMMAND --help' for a command's options.",
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    `Aliases: ${Object.entries(ALIASES).map(([a, c]) => `${a} = ${c}`).join(', ')}`,
    '',
    'Global options:',
    '  --socket PATH          nimbusd unix socket (env NIMBUS_SOCKET; default /run/nimbus/nimbus.sock)',
    '  -H, --host URL         nimbusd over TCP, tcp://HOST:PORT or https://HOST:PORT (nimbusd --tls-cert); several replicas',
    '                         comma-separated, tried in turn (env NIMBUS_HOST)',
    '  --tls-ca FILE          a CA (PEM) an https:// host\'s certificate may chain to, beside the system\'s (env NIMBUS_TLS_CA)',
    '  --project P            the project to act on: id, path (org/team) or name (env NIMBUS_PROJECT;',
    '                         default: your default project; * lists every project you can read)',
    '  -o, --output FORMAT    table or json, for listing and inspect commands (also --format)',
    '  -h, --help             Show this help',
    'Credentials: the token stored by `nimbus login` ($NIMBUS_CONFIG/token or ~/.config/nimbus/token),',
    '  overridden by NIMBUS_TOKEN (a session token or API key). Over the unix socket, no token = local admin.',
    '',
    'Exit codes: 0 ok, 1 error, 2 usage error, 125 run/create failed; run and exec exit with the container\'s code.',
    '',
  ].join('\n');
}

/** Find the command named by the first one or two words (after aliases). */
export function resolveCommand(words: string[]): { spec: CommandSpec; consumed: number } | undefined {
  for (const n of [3, 2, 1]) {
    if (words.length < n) continue;
    const name = words.slice(0, n).join(' ');
    const spec = COMMANDS.find((c) => c.name === (ALIASES[name] ?? name));
    if (spec) return { spec, consumed: n };
  }
  return undefined;
}

function parseOutput(v: string | undefined): GlobalOptions['output'] {
  if (v !== 'json' && v !== 'table') throw new UsageError(`--output must be table or json, got "${v ?? ''}"`);
  return v;
}

export async function main(argv: string[]): Promise<number> {
  const global: GlobalOptions = { output: 'table' };
  let i = 0;
  // Global options come before the command.
  try {
    for (; i < argv.length; i++) {
      const a = argv[i]!;
      const eq = a.startsWith('--') ? a.indexOf('=') : -1;
      const [flag, inline] = eq === -1 ? [a, undefined] : [a.slice(0, eq), a.slice(eq + 1)];
      const value = () => {
        const v = inline ?? argv[++i];
        if (v === undefined) throw new UsageError(`option ${flag} needs a value`);
        return v;
      };
      if (flag === '--socket') global.socket = value();
      else if (flag === '--host' || flag === '-H') global.host = value();
      else if (flag === '--tls-ca') global.tlsCa = value();
      else if (flag === '--project') global.project = value();
      else if (flag === '--output' || flag === '-o' || flag === '--format') global.output = parseOutput(value());
      else if (flag === '--help' || flag === '-h') {
        process.stdout.write(topHelp());
        return 0;
      } else if (flag === '--version' || flag === '-v') argv = [...argv.slice(0, i), 'version'];
      else if (flag.startsWith('-')) throw new UsageError(`unknown global option ${flag}`);
      else break;
    }
  } catch (e) {
    process.stderr.write(`nimbus: ${(e as Error).message}\n\n${topHelp()}`);
    return 2;
  }
  const rest = argv.slice(i);
  if (!rest.length) {
    process.stderr.write(topHelp());
    return 2;
  }
  if (rest[0] === 'help') {
    const found = resolveCommand(rest.slice(1));
    process.stdout.write(found ? helpText(found.spec) : topHelp());
    return 0;
  }
  const found = resolveCommand(rest);
  if (!found) {
    const group = COMMANDS.filter((c) => c.name.startsWith(`${rest[0]} `));
    if (group.length) {
      const w = Math.max(...group.map((c) => c.name.length));
      const text = `Usage: nimbus ${rest[0]} COMMAND\n\nCommands:\n${group.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`).join('\n')}\n`;
      const asked = rest[1] === undefined || rest[1] === '--help' || rest[1] === '-h';
      if (asked && rest[1] !== undefined) {
        process.stdout.write(text);
        return 0;
      }
      process.stderr.write(`${rest[1] === undefined ? '' : `nimbus: unknown command "${rest[0]} ${rest[1]}"\n\n`}${text}`);
      return 2;
    }
    process.stderr.write(`nimbus: unknown command "${rest[0]}"; see 'nimbus --help'\n`);
    return 2;
  }
  const { spec, consumed } = found;
  let parsed;
  try {
    parsed = parseArgs(spec, rest.slice(consumed));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`nimbus ${spec.name}: ${e.message}\n${usageLine(spec)}\nRun 'nimbus ${spec.name} --help' for more information.\n`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  if (typeof parsed.opts.output === 'string') global.output = parsed.opts.output as GlobalOptions['output'];
  if (typeof parsed.opts.project === 'string' && spec.options.includes(PROJECT_OPTION)) global.project = parsed.opts.project;
  try {
    return await spec.run({ ...parsed, global });
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`nimbus ${spec.name}: ${e.message}\n${usageLine(spec)}\nRun 'nimbus ${spec.name} --help' for more information.\n`);
      return 2;
    }
    process.stderr.write(`${errorText(e)}\n`);
    const code = (e as { exitCode?: unknown }).exitCode;
    return typeof code === 'number' ? code : 1;
  }
}
