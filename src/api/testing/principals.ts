/**
 * Route tests' two callers, by bearer token: "admin" (a system administrator) and "alice" (a
 * member of project p1 and nothing else); `services` stands in for identity and access.
 */
import { Unauthenticated } from '../../core/errors.js';
import type { Principal } from '../../control/identity/access.js';

export const admin: Principal = { userId: 'u0', name: 'root', systemAdmin: true, defaultProjectId: 'p1', via: 'apikey', tokenId: 't0' };
export const alice: Principal = { userId: 'u1', name: 'alice', systemAdmin: false, defaultProjectId: 'p1', via: 'apikey', tokenId: 't1' };

export const adminAndAlice = {
  identity: {
    authenticate: (token: string) => {
      if (token === 'admin') return admin;
      if (token === 'alice') return alice;
      throw new Unauthenticated('invalid token');
    },
    localAdmin: () => undefined,
  },
  access: { forPrincipal: async () => ({ roleOn: (id: string) => (id === 'p1' ? 'member' : undefined), canRead: (id: string) => id === 'p1' }) },
};
