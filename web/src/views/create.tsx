/**
 * Create a container, with the quota's explanation shown before submitting (explain.tsx).
 */
import { useEffect, useState } from 'preact/hooks';
import { ApiError, call, q, type Project } from '../api.js';
import { ExplanationBox, useExplanation } from './explain.js';
import type { Route } from '../app.js';
import { canWrite } from '../roles.js';
import { splitCommand } from '../format.js';

interface ImageRow { id: string; tags: string[] }


export function CreateContainerView({ project, role, navigate }: { project: Project; role: string | undefined; navigate: (r: Route) => void }) {
  const [images, setImages] = useState<string[]>([]);
  const [image, setImage] = useState('');
  const [name, setName] = useState('');
  const [command, setCommand] = useState('');
  const [cpus, setCpus] = useState('');
  const [memory, setMemory] = useState('');
  const [storage, setStorage] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    call<ImageRow[]>('GET', `/images?${q(project.path)}`).then((list) => {
      const refs = list.flatMap((i) => i.tags);
      // offered (the list, and the first as the placeholder an empty field stands for), never
      // written into the field: a value set while the user types lands in the middle of it
      setImages(refs);
    }, () => undefined);
  }, [project.path]);

  // what a container without sizes is given here (the project's defaults, or the daemon's, where its
  // memory or disk is limited; 0: nothing: memory unlimited and best effort, the layer unbounded): docs/identity.md
  const [unsizedMiB, setUnsizedMiB] = useState(0);
  const [unsizedLayerMiB, setUnsizedLayerMiB] = useState(0);
  useEffect(() => {
    call<{ unsizedContainerMemory?: number; unsizedContainerStorage?: number }>('GET', `/quota/${encodeURIComponent(project.path)}`).then((v) => {
      setUnsizedMiB(v.unsizedContainerMemory ?? 0);
      setUnsizedLayerMiB(v.unsizedContainerStorage ?? 0);
    }, () => {
      setUnsizedMiB(0);
      setUnsizedLayerMiB(0);
    });
  }, [project.path]);

  const cpuCount = cpus === '' ? undefined : Number(cpus);
  const memoryMiB = memory === '' ? undefined : Number(memory);
  const storageMiB = storage === '' ? undefined : Number(storage);
  // what the container would be charged: one instance, whole CPUs rounded up, memory and its writable layer in MiB
  const explanation = useExplanation(project.path, {
    instances: 1, cpus: cpuCount ? Math.ceil(cpuCount) : 0, memory: memoryMiB ? Math.ceil(memoryMiB) : unsizedMiB, disk: storageMiB ? Math.ceil(storageMiB) : unsizedLayerMiB,
  });

  if (!canWrite(role)) return <p>You have no role that may create instances in {project.path}.</p>;

  return (
    <section aria-labelledby="create-title">
      <h2 id="create-title">Create a container in {project.path}</h2>
      <form class="create" onSubmit={(e) => {
        e.preventDefault();
        setBusy(true);
        setError(null);
        const cmd = splitCommand(command);
        const body = {
          image: image || images[0]!, start: true,
          ...(name ? { name } : {}),
          ...(cmd.length ? { cmd } : {}),
          ...(cpuCount ? { cpus: cpuCount } : {}),
          ...(memoryMiB ? { memoryBytes: Math.round(memoryMiB * 1048576) } : {}),
          ...(storageMiB ? { storageBytes: Math.ceil(storageMiB) * 1048576 } : {}),
        };
        call('POST', `/containers?${q(project.path)}`, body).then(() => navigate({ view: 'instances' }), (x: unknown) => {
          setError(x instanceof ApiError ? x.message : String(x));
          setBusy(false);
        });
      }}>
        <label>Image
          <input name="image" list="image-list" required={images.length === 0} placeholder={images[0] ?? ''} value={image} onInput={(e) => setImage((e.target as HTMLInputElement).value)} />
          <datalist id="image-list">{images.map((r) => <option key={r} value={r} />)}</datalist>
        </label>
        <label>Name <input name="name" value={name} placeholder="generated when empty" onInput={(e) => setName((e.target as HTMLInputElement).value)} /></label>
        <label>Command <input name="command" value={command} placeholder="the image's when empty" onInput={(e) => setCommand((e.target as HTMLInputElement).value)} /></label>
        <label>CPUs <input name="cpus" type="number" min="0.01" step="0.01" value={cpus} placeholder="unlimited" onInput={(e) => setCpus((e.target as HTMLInputElement).value)} /></label>
        <label>Memory (MiB) <input name="memory" type="number" min="6" step="1" value={memory} placeholder={unsizedMiB ? `${unsizedMiB} (this project's default)` : 'unlimited'} onInput={(e) => setMemory((e.target as HTMLInputElement).value)} /></label>
        <label>Writable layer (MiB) <input name="storage" type="number" min="16" step="1" value={storage} placeholder={unsizedLayerMiB ? `${unsizedLayerMiB} (this project's default)` : 'unbounded'} onInput={(e) => setStorage((e.target as HTMLInputElement).value)} /></label>
        <ExplanationBox explanation={explanation} />
        {error ? <p role="alert" class="error">{error}</p> : null}
        <div class="buttons">
          <button type="submit" disabled={busy}>Create and start</button>
          <button type="button" onClick={() => navigate({ view: 'instances' })}>Cancel</button>
        </div>
      </form>
    </section>
  );
}
