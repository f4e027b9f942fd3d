/**
 * The agent protocol's routes of docker cp (protocol 8): GET /copy/ID streams the path named in
 * COPY_HEADER as a tar (chunked: a failure mid-way cuts the answer short, which the reader sees as
 * an error), its stat in COPY_STAT_HEADER; PUT takes the tar as the request body, never held
 * whole, extracts it under the path and answers with what was written. The id and the header's
 * fields are checked against agent-schemas.ts before the agent sees them; the path itself is
 * resolved inside the container's rootfs by the agent (agent/copy/).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidArgument, Unavailable } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent } from '../agent.js';
import { COPY_HEADER, COPY_STAT_HEADER } from './agent-protocol.js';
import { checkStreamArgs } from './agent-schemas.js';

const log = logger('agent-server');

/** COPY_HEADER's JSON, not yet checked. */
function copySpec(req: IncomingMessage): Record<string, unknown> {
  const h = req.headers[COPY_HEADER];
  if (typeof h !== 'string' || h.length > 16 * 1024) throw new InvalidArgument(`${COPY_HEADER} is missing or too long`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(h, 'base64').toString('utf8'));
  } catch {
    throw new InvalidArgument(`${COPY_HEADER} is not base64 of JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgument(`${COPY_HEADER} is not a JSON object`);
  return v as Record<string, unknown>;
}

export async function serveCopy(agent: Agent, method: 'GET' | 'PUT', rawId: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let id: string;
  let spec: Record<string, unknown>;
  const opts: { noOverwriteDirNonDir?: boolean; copyUIDGID?: boolean } = {};
  try {
    try {
      id = decodeURIComponent(rawId);
    } catch {
      throw new InvalidArgument('malformed id in the path');
    }
    spec = copySpec(req);
    if (method === 'GET') checkStreamArgs('readContainerArchive', [id, spec.path]);
    else {
      if (spec.noOverwriteDirNonDir !== undefined) opts.noOverwriteDirNonDir = spec.noOverwriteDirNonDir as boolean;
      if (spec.copyUIDGID !== undefined) opts.copyUIDGID = spec.copyUIDGID as boolean;
      checkStreamArgs('writeContainerArchive', [id, spec.path, opts]);
    }
  } catch (e) {
    req.resume();
    throw e;
  }
  const path = spec.path as string;
  if (method === 'GET') {
    req.resume();
    const { stat, bytes } = await agent.readContainerArchive(id, path);
    res.on('error', () => undefined);
    res.writeHead(200, { 'content-type': 'application/x-tar', 'cache-control': 'no-cache', [COPY_STAT_HEADER]: Buffer.from(JSON.stringify(stat)).toString('base64') });
    // a failure mid-way destroys the answer (no clean end): the reader cannot take a part for the whole
    await pipeline(bytes, res).catch((e: unknown) => {
      log.warn('a copy out of a container ended early', { id, error: String(e) });
      bytes.destroy();
      res.destroy();
    });
    return;
  }
  // the body through a PassThrough: an extraction that stops reading early (refused) leaves the request to be drained
  const body = new PassThrough();
  const gone = () => new Unavailable(`the sender of the copy into ${id} went away before its end`);
  req.on('error', () => body.destroy(gone()));
  req.once('close', () => {
    if (!req.complete) body.destroy(gone());
  });
  req.pipe(body);
  try {
    const result = await agent.writeContainerArchive(id, path, opts, body);
    const payload = JSON.stringify({ result });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
    res.end(payload);
  } finally {
    body.destroy();
    req.unpipe(body);
    if (!req.complete) req.resume();
  }
}
