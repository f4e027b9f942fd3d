/** `nimbus group ...` (server groups) and `nimbus scheduler explain`. PLACEHOLDER until the scheduler lands. */
import type { CommandSpec } from '../args.js';

export const schedulerCommands: CommandSpec[] = [];
