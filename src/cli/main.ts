/** Entry point of the nimbus CLI (bin/nimbus imports the built copy of this file). See cli.ts. */
import { main } from './cli.js';

// `nimbus ps | head`: a closed pipe is not an error.
for (const s of [process.stdout, process.stderr]) {
  s.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
}

/** Exit once stdout and stderr are flushed: a request still open (a wait, a stream) must not keep us alive. */
function exit(code: number): void {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

main(process.argv.slice(2)).then(exit, (e: unknown) => {
  process.stderr.write(`nimbus: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  exit(1);
});
