/** The project's images, and a pull with its progress (layer bytes as the operation reports them). */
import { useEffect, useState } from 'preact/hooks';
import { call, messageOf, pullImage, q, type ImageRecord, type Project, type PullProgress } from '../api.js';
import { canWrite } from '../roles.js';
import { bytes } from '../format.js';

export function ImagesView({ project, role }: { project: Project; role: string | undefined }) {
  const [images, setImages] = useState<ImageRecord[] | null>(null);
  const [reference, setReference] = useState('');
  const [progress, setProgress] = useState<PullProgress | null>(null);
  const [pulling, setPulling] = useState(false);
  const [message, setMessage] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = () => call<ImageRecord[]>('GET', `/images?${q(project.path)}`).then(setImages, (e: unknown) => setError(messageOf(e)));
  useEffect(() => {
    void load();
  }, [project.path]);

  const done = progress?.bytesDone ?? 0;
  const total = progress?.bytesTotal ?? 0;
  return (
    <section aria-labelledby="images-title" class="stack">
      <h2 id="images-title">Images of {project.path}</h2>
      {canWrite(role) ? (
        <form class="inline-form" onSubmit={(e) => {
          e.preventDefault();
          setPulling(true);
          setError(null);
          setMessage(null);
          setProgress(null);
          pullImage(project.path, reference.trim(), setProgress).then(() => {
            setMessage(`Pulled ${reference.trim()}`);
            return load();
          }, (x: unknown) => setError(messageOf(x))).finally(() => setPulling(false));
        }}>
          <label>Image to pull <input name="reference" required value={reference} placeholder="registry/name:tag" onInput={(e) => setReference((e.target as HTMLInputElement).value)} /></label>
          <button type="submit" disabled={pulling}>Pull</button>
        </form>
      ) : null}
      {progress || pulling ? (
        <div class="bar-row" data-testid="pull-progress">
          <span class="bar-label">{progress?.phase ?? 'starting'}</span>
          <div class="bar" role="progressbar" aria-label="Pull progress" aria-valuemin={0} aria-valuemax={total || 1} aria-valuenow={total ? done : 0}
            aria-valuetext={total ? `${bytes(done)} of ${bytes(total)}` : (progress?.phase ?? 'starting')}>
            <div class="bar-fill" style={{ width: `${total ? Math.min(100, (done / total) * 100) : 0}%` }} />
          </div>
          <span class="bar-text">{total ? `${bytes(done)} / ${bytes(total)}` : ''}{progress?.layers ? ` · ${progress.layers.length} layers` : ''}</span>
        </div>
      ) : null}
      <div role="status" aria-live="polite">{message}</div>
      {error ? <p role="alert" class="error">{error}</p> : null}
      {!images ? <p>Loading…</p> : images.length === 0 ? <p class="muted">No image in this project.</p> : (
        <table class="figures" data-testid="images">
          <thead><tr><th scope="col">Tags</th><th scope="col">Id</th><th scope="col">Size</th><th scope="col">Pulled</th></tr></thead>
          <tbody>{images.map((i) => (
            <tr key={i.id}><th scope="row">{i.tags.length ? i.tags.join(', ') : '<none>'}</th><td><code>{i.id.replace(/^sha256:/, '').slice(0, 12)}</code></td><td>{bytes(i.size)}</td><td>{new Date(i.createdAt).toLocaleString()}</td></tr>
          ))}</tbody>
        </table>
      )}
    </section>
  );
}
