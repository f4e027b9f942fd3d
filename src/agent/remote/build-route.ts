/**
 * The agent protocol's build route (protocol 6): POST /build with the BuildRequest in BUILD_HEADER
 * (base64 JSON, checked against agent-schemas.ts) and the context tar as the request body, never
 * held whole. The answer is NDJSON: `{"progress":{line}}` per output line, then `{"result":image}`
 * or an in-band `{"error":…}`. A client that goes away cancels the build (its processes are killed
 * and everything it made removed).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PassThrough } from 'node:stream';
import { InvalidArgument, Unavailable } from '../../core/errors.js';
import type { Agent, BuildRequest } from '../agent.js';
import { BUILD_HEADER, NDJSON, ndjsonLine } from './agent-protocol.js';
import { checkBuildRequest } from './agent-schemas.js';

/** The request header's largest size (the base images and build args of one build). */
const MAX_HEADER_CHARS = 192 * 1024;

export function decodeBuildRequest(header: string | string[] | undefined): BuildRequest {
  if (typeof header !== 'string' || header.length > MAX_HEADER_CHARS) throw new InvalidArgument(`${BUILD_HEADER} must carry the build request`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(header, 'base64').toString('utf8'));
  } catch {
    throw new InvalidArgument(`${BUILD_HEADER} is not base64 JSON`);
  }
  return checkBuildRequest(v);
}

export async function serveBuild(agent: Agent, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let spec: BuildRequest;
  try {
    spec = decodeBuildRequest(req.headers[BUILD_HEADER]);
  } catch (e) {
    req.resume();
    throw e;
  }
  const ac = new AbortController();
  res.once('close', () => ac.abort());
  const body = new PassThrough();
  const gone = () => new Unavailable('the sender of the build context went away before its end');
  req.on('error', () => body.destroy(gone()));
  req.once('close', () => {
    if (!req.complete) body.destroy(gone());
  });
  req.pipe(body);
  res.on('error', () => undefined);
  // setHeader: the server's error path reads the content type back to answer in band
  res.setHeader('content-type', NDJSON);
  res.setHeader('cache-control', 'no-cache');
  res.writeHead(200);
  res.flushHeaders();
  const send = (v: unknown) => {
    if (!res.writableEnded && !res.destroyed) res.write(ndjsonLine(v));
  };
  try {
    const image = await agent.buildImage(spec, body, (progress) => send({ progress }), ac.signal);
    send({ result: image });
    res.end();
  } finally {
    body.destroy();
    req.unpipe(body);
    if (!req.complete) req.resume();
  }
}
