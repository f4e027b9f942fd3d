/**
 * The agent protocol's routes of a cold container move (protocol 6; `log`, 8): GET
 * /move/{layer|volume|log}/ID streams a stopped container's writable layer, a volume's data or a
 * container's log as a tar (chunked: its size is
 * not known ahead; a failure mid-way cuts the answer short, which the reader sees as an error, and
 * the tar's own end marker is missing); PUT takes the tar as the request body, never held whole,
 * and answers with what was imported. The ids (and a layer's image chain id, in a header) are
 * checked against agent-schemas.ts before the agent sees them.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidArgument, Unavailable } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent } from '../agent.js';
import { IMAGE_CHAIN_HEADER, LAYER_SIZE_HEADER } from './agent-protocol.js';
import type { LayerImportOptions } from '../agent.js';
import { checkStreamArgs, type CheckedStreamMethod } from './agent-schemas.js';

const log = logger('agent-server');

function sendJson(res: ServerResponse, value: unknown): void {
  const payload = JSON.stringify(value);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
  res.end(payload);
}

/** The Agent method each route serves. */
export const MOVE_METHODS = {
  layer: { GET: 'exportContainerLayer', PUT: 'importContainerLayer' },
  volume: { GET: 'exportVolume', PUT: 'importVolume' },
  log: { GET: 'exportContainerLogs', PUT: 'importContainerLogs' },
  // protocol 9: a live move's checkpoint images
  checkpoint: { GET: 'exportCheckpoint', PUT: 'importCheckpoint' },
} as const satisfies Record<string, { GET: CheckedStreamMethod; PUT: CheckedStreamMethod }>;

export async function serveMove(agent: Agent, method: 'GET' | 'PUT', what: keyof typeof MOVE_METHODS, rawId: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let id: string;
  let chain: string | undefined;
  let layer: LayerImportOptions = {};
  try {
    try {
      id = decodeURIComponent(rawId);
    } catch {
      throw new InvalidArgument('malformed id in the path');
    }
    if (method === 'PUT' && what === 'layer') {
      const h = req.headers[IMAGE_CHAIN_HEADER];
      chain = typeof h === 'string' ? h : undefined;
      const size = req.headers[LAYER_SIZE_HEADER];
      if (typeof size === 'string') {
        if (!/^\d{1,20}$/.test(size)) throw new InvalidArgument(`malformed ${LAYER_SIZE_HEADER}`);
        layer = { storageBytes: Number(size) };
      }
      checkStreamArgs('importContainerLayer', [id, chain, layer]);
    } else checkStreamArgs(MOVE_METHODS[what][method], [id]);
  } catch (e) {
    req.resume();
    throw e;
  }
  if (method === 'GET') {
    req.resume();
    const tar = await agent[MOVE_METHODS[what].GET](id);
    res.on('error', () => undefined);
    res.writeHead(200, { 'content-type': 'application/x-tar', 'cache-control': 'no-cache' });
    // a failure mid-way destroys the answer (no clean end): the reader cannot take a part for the whole
    await pipeline(tar, res).catch((e: unknown) => {
      log.warn('a move export ended early', { what, id, error: String(e) });
      res.destroy();
    });
    return;
  }
  // the body through a PassThrough: an import that stops reading early (refused) leaves the request to be drained
  const body = new PassThrough();
  const gone = () => new Unavailable(`the sender of ${what} ${id} went away before its end`);
  req.on('error', () => body.destroy(gone()));
  req.once('close', () => {
    if (!req.complete) body.destroy(gone());
  });
  req.pipe(body);
  try {
    const result = what === 'layer' ? await agent.importContainerLayer(id, chain!, body, layer) : await agent[MOVE_METHODS[what].PUT as Exclude<(typeof MOVE_METHODS)[keyof typeof MOVE_METHODS]['PUT'], 'importContainerLayer'>](id, body);
    sendJson(res, { result });
  } finally {
    body.destroy();
    req.unpipe(body);
    if (!req.complete) req.resume();
  }
}
