/**
 * nimbus: the command-line client. It talks only to the REST API.
 * Exit codes: the container's for run/exec/start -a; 1 for an error reported by
 * the daemon; 2 for a usage error; 125 when run/create fails before the
 * container exists (docker's convention).
 */
import { ApiError } from './client.js';
import { UsageError, helpText, parseArgs, type CommandSpec, type GlobalOptions } from './args.js';
import { containerCommands } from './commands/containers.js';
import { imageCommands } from './commands/images.js';
import { systemCommands } from './commands/system.js';
import { quotaCommands } from './commands/quota.js';

export const COMMANDS: CommandSpec[] = [...containerCommands, ...imageCommands, ...quotaCommands, ...systemCommands];
const ALIASES: Record<string, string> = { pull: 'image pull', images: 'image ls', rmi: 'image rm', 'image list': 'image ls', 'image remove': 'image rm', 'operation list': 'operation ls' };

function topHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    'Usage: nimbus [--socket PATH | --host tcp://H:P] [--output table|json] COMMAND [OPTIONS] [ARGS]',
    '',
    'A client of nimbusd. Run `nimbus COMMAND --help` for a command\'s options.',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    'Aliases: pull = image pull, images = image ls, rmi = image rm',
    'Environment: NIMBUS_SOCKET (default /run/nimbus/nimbus.sock), NIMBUS_HOST, NIMBUS_TOKEN',
    '',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const global: GlobalOptions = { output: 'table' };
  let i = 0;
  // Global options come before the command.
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    if (flag === '--socket') global.socket = value();
    else if (flag === '--host' || flag === '-H') global.host = value();
    else if (flag === '--output' || flag === '-o' || flag === '--format') global.output = value() === 'json' ? 'json' : 'table';
    else if (flag === '--help' || flag === '-h') {
      process.stdout.write(topHelp());
      return 0;
    } else break;
  }
  const rest = argv.slice(i);
  if (!rest.length) {
    process.stdout.write(topHelp());
    return 2;
  }
  const two = `${rest[0]} ${rest[1] ?? ''}`.trim();
  const name = [two, rest[0]!].map((n) => ALIASES[n] ?? n).find((n) => COMMANDS.some((c) => c.name === n));
  const spec = COMMANDS.find((c) => c.name === name);
  if (!spec) {
    const group = COMMANDS.filter((c) => c.name.startsWith(`${rest[0]} `));
    if (group.length) {
      process.stderr.write(`Usage: nimbus ${rest[0]} COMMAND\n\nCommands:\n${group.map((c) => `  ${c.name.padEnd(18)} ${c.summary}`).join('\n')}\n`);
      return rest[1] === '--help' || rest[1] === '-h' ? 0 : 2;
    }
    process.stderr.write(`nimbus: unknown command "${rest[0]}"; see nimbus --help\n`);
    return 2;
  }
  const consumed = two === name || ALIASES[two] === name ? 2 : 1;
  const args = rest.slice(consumed);
  // --help before the first positional (run stops parsing there).
  const firstPositional = args.findIndex((a) => !a.startsWith('-'));
  const head = spec.stopAtPositional && firstPositional !== -1 ? args.slice(0, firstPositional) : args;
  if (head.includes('--help') || head.includes('-h')) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  // Per-command --output (docker accepts `--format json` after the verb too).
  const stripped: string[] = [];
  for (let j = 0; j < args.length; j++) {
    const a = args[j]!;
    if ((!spec.stopAtPositional || j < (firstPositional === -1 ? args.length : firstPositional)) && (a === '--output' || a === '-o' || a === '--format')) {
      global.output = args[++j] === 'json' ? 'json' : 'table';
    } else if (a.startsWith('--output=') || a.startsWith('--format=')) global.output = a.endsWith('=json') ? 'json' : 'table';
    else stripped.push(a);
  }
  try {
    const parsed = parseArgs(spec, stripped);
    return await spec.run({ ...parsed, global });
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`nimbus ${spec.name}: ${e.message}\n\n${helpText(spec)}`);
      return 2;
    }
    const code = (e as { exitCode?: number }).exitCode;
    if (e instanceof ApiError) process.stderr.write(`Error: ${e.code}: ${e.message}\n`);
    else process.stderr.write(`Error: ${(e as Error).message}\n`);
    return code ?? 1;
  }
}

// Run when executed directly (bin/nimbus imports this file).
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`nimbus: ${String(e)}\n`);
    process.exitCode = 1;
  },
);
