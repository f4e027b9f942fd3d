/**
 * The real docker CLI against a nimbusd's Docker API socket, for e2e tests: Debian's 20.10 at
 * /usr/bin/docker when installed, else the one on the machine (NIMBUS_DOCKER_CLI picks another).
 * HOME and DOCKER_CONFIG point into a temp dir of the test's: the host's docker config is never read.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { run } from '../../src/core/exec.js';

export const DOCKER_CLI = [process.env.NIMBUS_DOCKER_CLI ?? '', '/usr/bin/docker', '/usr/local/bin/docker'].find((p) => p && existsSync(p));

export interface DockerCli {
  /** Runs `docker ARGS` (60 s at most) as this client. */
  run(args: string[], env?: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Its stdout; fails the test on a non-zero exit, with stderr. */
  ok(args: string[]): Promise<string>;
}

/**
 * A client of the Docker API at `socket`, its config in `configDir` (made here), with
 * `headers` as the config's HttpHeaders (a tenant's token and project, as nimbus docker-env prints).
 */
export function dockerCli(socket: string, configDir: string, headers: Record<string, string> = {}): DockerCli {
  mkdirSync(configDir, { recursive: true });
  if (Object.keys(headers).length) writeFileSync(join(configDir, 'config.json'), JSON.stringify({ HttpHeaders: headers }));
  const cli: DockerCli = {
    run: async (args, env = {}) => {
      const r = await run(DOCKER_CLI!, args, {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: configDir, DOCKER_HOST: `unix://${socket}`, DOCKER_CONFIG: configDir, ...env },
        timeoutMs: 60_000,
      });
      return { code: r.code, stdout: r.stdout, stderr: r.stderr };
    },
    ok: async (args) => {
      const r = await cli.run(args);
      assert.equal(r.code, 0, `docker ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    },
  };
  return cli;
}

/** A raw request on a Docker API socket (what the CLI would not let a test send). */
export function rawDockerRequest(socket: string, method: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path, method, headers }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}
