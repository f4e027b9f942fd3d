/**
 * GET /metrics: this process's Prometheus metrics in the text format (docs/metering.md).
 * System administrators only: a scraper sends an administrator's API key as its bearer token
 * (Prometheus' `authorization: { credentials_file: … }`), or scrapes over the unix socket.
 */
import { Type } from '@sinclair/typebox';
import { Unavailable } from '../../core/errors.js';
import { route } from '../route.js';

/** A body sent as it is, with its content type, rather than as JSON. */
export class TextBody {
  constructor(readonly contentType: string, readonly text: string) {}
}

export function isTextBody(b: unknown): b is TextBody {
  return b instanceof TextBody;
}

export const metricsRoutes = [
  route({
    method: 'GET', path: '/metrics', operationId: 'metrics', tag: 'system', access: 'read',
    auth: { global: 'admin' },
    summary: 'Prometheus metrics of the answering control-plane process (text format 0.0.4): API requests, operations, instances, scheduler and quota decisions, warm pools, hosts, per-instance CPU and memory',
    response: Type.String({ description: 'Prometheus text exposition format' }),
    handler: async ({ services }) => {
      if (!services.metrics) throw new Unavailable('this control plane keeps no metrics');
      const { contentType, text } = await services.metrics.text();
      return { body: new TextBody(contentType, text) as never };
    },
  }),
];
