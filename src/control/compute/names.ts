import { randomInt } from 'node:crypto';

// Docker-style generated names: short, memorable, and drawn from the seeds' history.
const ADJECTIVES = ['brave', 'calm', 'eager', 'fuzzy', 'gentle', 'happy', 'jolly', 'keen', 'lucid', 'merry', 'nimble', 'proud', 'quiet', 'rapid', 'sharp', 'tidy', 'vivid', 'witty', 'young', 'zesty'];
const NOUNS = ['xen', 'qemu', 'kvm', 'runc', 'crun', 'nova', 'glance', 'keystone', 'cinder', 'swift', 'neutron', 'heat', 'magnum', 'murano', 'kolla', 'horizon', 'ironic', 'sahara', 'solum', 'barbican'];

/** `taken` may ask the store: candidates are tried one after another. */
export async function generateName(taken: (name: string) => boolean | Promise<boolean>): Promise<string> {
  for (let i = 0; i < 50; i++) {
    const name = `${ADJECTIVES[randomInt(ADJECTIVES.length)]}_${NOUNS[randomInt(NOUNS.length)]}`;
    const candidate = i < 10 ? name : `${name}${randomInt(1000)}`;
    if (!(await taken(candidate))) return candidate;
  }
  throw new Error('could not generate a free container name');
}
