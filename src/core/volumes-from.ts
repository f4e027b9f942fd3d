/** --volumes-from's grammar, shared by the Docker API and the nimbus CLI (resolved in control/volumes/volumes-from.ts). Pure. */
import { InvalidArgument } from './errors.js';

export interface VolumesFromRef {
  container: string;
  /** ro or rw for every mount; absent: each as the other container has it. */
  mode?: 'ro' | 'rw';
}

/** "CONTAINER[:ro|rw]" each, as docker takes them. */
export function parseVolumesFrom(list: readonly string[] | undefined): VolumesFromRef[] {
  return (list ?? []).map((v) => {
    const [container = '', mode, extra] = v.split(':');
    if (!container || extra !== undefined || (mode !== undefined && mode !== 'ro' && mode !== 'rw')) {
      throw new InvalidArgument(`invalid --volumes-from "${v.slice(0, 300)}": CONTAINER[:ro|rw]`);
    }
    return { container, ...(mode ? { mode: mode as 'ro' | 'rw' } : {}) };
  });
}
