/**
 * Pages of a list route: `?limit=N` (1..1000) and `?after=CURSOR`, keyset-style. The body stays
 * the JSON array it always was (a client that asks no page gets every item, as before); the next
 * page's URL travels in a `Link: <…>; rel="next"` header (RFC 8288, as GitHub's API does) and the
 * number of items the caller may see in `X-Total-Count`.
 *
 * A cursor is the last item's sort key, not a position: an item created or removed between two
 * pages neither repeats nor shifts another one out of the walk.
 */
import { Type } from '@sinclair/typebox';
import type { IncomingMessage } from 'node:http';
import { InvalidArgument } from '../core/errors.js';
import type { RouteResult } from './route.js';

export const MAX_PAGE = 1000;

/** The query fields a paged list takes (spread into its query schema). */
export const PageQuery = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PAGE, description: `Items in this page (at most ${MAX_PAGE}); absent: all. The next page's URL is in the Link header (rel="next")` })),
  after: Type.Optional(Type.String({ minLength: 1, maxLength: 512, pattern: '^[A-Za-z0-9_-]+$', description: 'Cursor from the previous page\'s Link header' })),
};

/** A total order of the items: compared element by element. */
export type SortKey = readonly (string | number)[];

const compare = (a: SortKey, b: SortKey): number => {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x === y) continue;
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    return x < y ? -1 : 1;
  }
  return 0;
};

export const encodeCursor = (key: SortKey): string => Buffer.from(JSON.stringify(key)).toString('base64url');

export function decodeCursor(cursor: string): SortKey {
  let key: unknown;
  try {
    key = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    key = undefined;
  }
  if (!Array.isArray(key) || key.length === 0 || key.length > 4 || !key.every((k) => typeof k === 'string' || typeof k === 'number')) {
    throw new InvalidArgument('after: not a cursor this API gave (take it from the Link header of the previous page)');
  }
  return key as SortKey;
}

/** The request's URL with `after` set to the cursor (other parameters kept). */
function nextUrl(req: IncomingMessage, cursor: string): string {
  const url = new URL(req.url ?? '/', 'http://nimbus.invalid');
  url.searchParams.set('after', cursor);
  return `${url.pathname}${url.search}`;
}

/**
 * The page of `items` the query asks for, sorted by `keyOf` when a page is asked (unpaged lists
 * keep their order), shown with `show`, with the Link and X-Total-Count headers.
 */
export function paged<T, U = T>(
  items: readonly T[], keyOf: (item: T) => SortKey, query: { limit?: number; after?: string }, req: IncomingMessage,
  /** What the page shows of an item (its view), applied to the page's items only. */
  show: (item: T) => U = (item) => item as unknown as U,
  /** Newest first (largest key first) rather than oldest first. */
  order: 'ascending' | 'descending' = 'ascending',
): RouteResult<U[]> & { body: U[]; headers: Record<string, string> } {
  const headers: Record<string, string> = { 'x-total-count': String(items.length) };
  if (query.limit === undefined && query.after === undefined) return { body: items.map(show), headers };
  const sign = order === 'ascending' ? 1 : -1;
  const keyed = items.map((item) => ({ item, key: keyOf(item) })).sort((a, b) => sign * compare(a.key, b.key));
  const after = query.after === undefined ? undefined : decodeCursor(query.after);
  const start = after === undefined ? 0 : keyed.findIndex((k) => sign * compare(k.key, after) > 0);
  const rest = start < 0 ? [] : keyed.slice(start);
  const page = query.limit === undefined ? rest : rest.slice(0, query.limit);
  if (page.length < rest.length) headers.link = `<${nextUrl(req, encodeCursor(page[page.length - 1]!.key))}>; rel="next"`;
  return { body: page.map((k) => show(k.item)), headers };
}
