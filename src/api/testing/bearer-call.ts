/** Route tests' HTTP client: one request to the API on loopback with a bearer token, JSON in, the answer's text and parsed body out. */
import { request } from 'node:http';

// the body is whatever the route answered: each test reads the fields it asserts on
export interface CallResult { status: number; text: string; body: any }

export function bearerCall(port: number): (token: string, method: string, path: string, body?: unknown) => Promise<CallResult> {
  return (token, method, path, body) =>
    new Promise((ok, fail) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request({ host: '127.0.0.1', port, method, path, headers: { authorization: `Bearer ${token}`, ...(payload ? { 'content-type': 'application/json' } : {}) } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => ok({ status: res.statusCode ?? 0, text, body: text ? JSON.parse(text) : undefined }));
      });
      req.on('error', fail);
      req.end(payload);
    });
}
