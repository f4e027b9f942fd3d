import { randomBytes } from 'node:crypto';

/** 64 hex characters, like Docker and containerd ids; the first 12 are the short form. */
export function newId(): string {
  return randomBytes(32).toString('hex');
}

export function shortId(id: string): string {
  return id.slice(0, 12);
}

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;
export function isValidName(name: string): boolean {
  return NAME_RE.test(name);
}
