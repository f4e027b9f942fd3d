import { ApiClient } from '../client.js';
import type { GlobalOptions } from '../args.js';

export function clientOf(g: GlobalOptions): ApiClient {
  return new ApiClient({ ...(g.socket ? { socket: g.socket } : {}), ...(g.host ? { host: g.host } : {}), ...(g.project ? { project: g.project } : {}) });
}
