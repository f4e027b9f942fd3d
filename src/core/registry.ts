/**
 * A typed registry of implementations for one seam (containerd's plugin
 * registry, Incus' drivers/load.go). Each implementation declares a host probe;
 * the registry advertises what this host can actually run.
 */
export interface Implementation<T, Ctx> {
  readonly name: string;
  /** Resolves to undefined when usable here, or a human reason why not. */
  probe(ctx: Ctx): Promise<string | undefined>;
  create(ctx: Ctx): T | Promise<T>;
}

export interface ProbeResult {
  name: string;
  usable: boolean;
  reason?: string;
}

export class Registry<T, Ctx> {
  private readonly impls = new Map<string, Implementation<T, Ctx>>();
  constructor(readonly seam: string) {}

  register(impl: Implementation<T, Ctx>): this {
    if (this.impls.has(impl.name)) throw new Error(`${this.seam}: ${impl.name} registered twice`);
    this.impls.set(impl.name, impl);
    return this;
  }

  names(): string[] {
    return [...this.impls.keys()];
  }

  get(name: string): Implementation<T, Ctx> | undefined {
    return this.impls.get(name);
  }

  async probeAll(ctx: Ctx): Promise<ProbeResult[]> {
    return Promise.all(
      [...this.impls.values()].map(async (impl) => {
        const reason = await impl.probe(ctx).catch((e: unknown) => String(e));
        return reason === undefined ? { name: impl.name, usable: true } : { name: impl.name, usable: false, reason };
      }),
    );
  }
}
