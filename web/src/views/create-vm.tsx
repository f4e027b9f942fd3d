/**
 * Create a VM: boots from a disk image of the project (a copy-on-write overlay of it) or from a
 * kernel and initrd image; NICs on the project's networks. The quota's explanation is shown
 * before submitting, charged as the server charges a VM: one instance, its vCPUs, its memory.
 */
import { useEffect, useState } from 'preact/hooks';
import { call, messageOf, q, type DiskImage, type Network, type Project } from '../api.js';
import type { Route } from '../app.js';
import { canWrite } from '../roles.js';
import { bytes } from '../format.js';
import { ExplanationBox, useExplanation } from './explain.js';

/** The server's defaults when cpus or memoryMiB are left out (src/api/routes/vms.ts). */
const DEFAULT_CPUS = 1;
const DEFAULT_MEMORY_MIB = 256;

export function CreateVmView({ project, role, navigate }: { project: Project; role: string | undefined; navigate: (r: Route) => void }) {
  const [images, setImages] = useState<DiskImage[]>([]);
  const [networks, setNetworks] = useState<Network[]>([]);
  const [boot, setBoot] = useState<'disk' | 'kernel'>('disk');
  const [name, setName] = useState('');
  const [cpus, setCpus] = useState(String(DEFAULT_CPUS));
  const [memory, setMemory] = useState(String(DEFAULT_MEMORY_MIB));
  const [disk, setDisk] = useState('');
  const [kernel, setKernel] = useState('');
  const [initrd, setInitrd] = useState('');
  const [append, setAppend] = useState('');
  const [chosenNetworks, setChosenNetworks] = useState<string[]>([]);
  const [start, setStart] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    const p = q(project.path);
    Promise.all([call<DiskImage[]>('GET', `/disk-images?${p}`), call<Network[]>('GET', `/networks?${p}`)]).then(([imgs, nets]) => {
      setImages(imgs);
      setNetworks(nets);
      const first = (f: (d: DiskImage) => boolean) => imgs.find(f)?.name ?? '';
      setDisk((cur) => cur || first((d) => d.format === 'raw' || d.format === 'qcow2'));
      setKernel((cur) => cur || first((d) => d.format === 'kernel'));
      setInitrd((cur) => cur || first((d) => d.format === 'initrd'));
      // no disk image but a kernel: the kernel boot is the only one possible
      if (!imgs.some((d) => d.format === 'raw' || d.format === 'qcow2') && imgs.some((d) => d.format === 'kernel')) setBoot('kernel');
    }, (e: unknown) => setError(messageOf(e)));
  }, [project.path]);

  const cpuCount = Number(cpus) || DEFAULT_CPUS;
  const memoryMiB = Number(memory) || DEFAULT_MEMORY_MIB;
  const explanation = useExplanation(project.path, { instances: 1, cpus: cpuCount, memory: memoryMiB });

  if (!canWrite(role)) return <p>You have no role that may create instances in {project.path}.</p>;

  const disks = images.filter((d) => d.format === 'raw' || d.format === 'qcow2');
  const kernels = images.filter((d) => d.format === 'kernel');
  const initrds = images.filter((d) => d.format === 'initrd');
  const text = (set: (v: string) => void) => (e: Event) => set((e.target as HTMLInputElement).value);

  return (
    <section aria-labelledby="create-vm-title">
      <h2 id="create-vm-title">Create a VM in {project.path}</h2>
      <form class="create" onSubmit={(e) => {
        e.preventDefault();
        setBusy(true);
        setError(null);
        const body = {
          ...(name ? { name } : {}), cpus: cpuCount, memoryMiB,
          ...(boot === 'disk' ? { image: disk } : { kernel, ...(initrd ? { initrd } : {}), ...(append ? { append } : {}) }),
          ...(chosenNetworks.length ? { networks: chosenNetworks } : {}),
        };
        (async () => {
          const vm = await call<{ id: string }>('POST', `/vms?${q(project.path)}`, body);
          if (start) await call('POST', `/vms/${encodeURIComponent(vm.id)}/start`);
          navigate({ view: 'instances', selected: { kind: 'vm', id: vm.id } });
        })().catch((x: unknown) => {
          setError(messageOf(x));
          setBusy(false);
        });
      }}>
        <label>Name <input name="name" value={name} placeholder="generated when empty" onInput={text(setName)} /></label>
        <label>vCPUs <input name="cpus" type="number" min="1" max="64" step="1" required value={cpus} onInput={text(setCpus)} /></label>
        <label>Memory (MiB) <input name="memory" type="number" min="16" step="1" required value={memory} onInput={text(setMemory)} /></label>
        <fieldset>
          <legend>Boot from</legend>
          <label class="inline"><input type="radio" name="boot" value="disk" checked={boot === 'disk'} onChange={() => setBoot('disk')} /> a disk image</label>
          <label class="inline"><input type="radio" name="boot" value="kernel" checked={boot === 'kernel'} onChange={() => setBoot('kernel')} /> a kernel and initrd</label>
        </fieldset>
        {boot === 'disk' ? (
          <label>Disk image
            <select name="image" aria-label="Disk image" required value={disk} onChange={text(setDisk)}>
              {disks.length === 0 ? <option value="">none in this project (nimbus image import-disk)</option> : null}
              {disks.map((d) => <option key={d.name} value={d.name}>{d.name} ({d.format}, {bytes(d.virtualSize)})</option>)}
            </select>
          </label>
        ) : (
          <>
            <label>Kernel
              <select name="kernel" aria-label="Kernel" required value={kernel} onChange={text(setKernel)}>
                {kernels.length === 0 ? <option value="">none in this project (image import-disk --type kernel)</option> : null}
                {kernels.map((d) => <option key={d.name} value={d.name}>{d.name} ({bytes(d.size)})</option>)}
              </select>
            </label>
            <label>Initrd
              <select name="initrd" aria-label="Initrd" value={initrd} onChange={text(setInitrd)}>
                <option value="">none</option>
                {initrds.map((d) => <option key={d.name} value={d.name}>{d.name} ({bytes(d.size)})</option>)}
              </select>
            </label>
            <label>Kernel command line <input name="append" value={append} placeholder="console=ttyS0" onInput={text(setAppend)} /></label>
          </>
        )}
        <fieldset>
          <legend>Networks (a NIC on each, eth0 first)</legend>
          {networks.length === 0 ? <p class="muted">No network yet: the project's "bridge" is made on first use.</p> : networks.map((n) => (
            <label key={n.id} class="inline">
              <input type="checkbox" name="networks" value={n.name} checked={chosenNetworks.includes(n.name)}
                onChange={(e) => {
                  const on = (e.target as HTMLInputElement).checked;
                  setChosenNetworks((cur) => (on ? [...cur, n.name] : cur.filter((x) => x !== n.name)));
                }} /> {n.name} <span class="muted">{n.subnet}</span>
            </label>
          ))}
        </fieldset>
        <label class="inline"><input type="checkbox" name="start" checked={start} onChange={(e) => setStart((e.target as HTMLInputElement).checked)} /> Start it once created</label>
        <ExplanationBox explanation={explanation} />
        {error ? <p role="alert" class="error">{error}</p> : null}
        <div class="buttons">
          <button type="submit" disabled={busy}>Create VM</button>
          <button type="button" onClick={() => navigate({ view: 'instances' })}>Cancel</button>
        </div>
      </form>
    </section>
  );
}
