/**
 * The builder's (buildah's) output lines as the clients show them: Docker's "Step N/T : X" for
 * buildah's "[s/S] STEP n/m: X" (numbered across stages, as the legacy builder does), and the
 * lines of buildah's own commit and export left out (the image is Nimbus's, not buildah's).
 */

/** A line only buildah's storage cares about: its commit, its copy of blobs, its local tag and id. */
export function isBuilderNoise(line: string): boolean {
  return /^(Getting image source signatures|Copying (blob|config) |Writing manifest to image destination|Storing signatures|--> [0-9a-f]+$|Successfully tagged localhost\/nimbus-build-|[0-9a-f]{64}$|(\[\d+\/\d+\] )?COMMIT( |$))/.test(line);
}

/** Counts the steps across stages: one per instance (a build's output is read by one of them, in order). */
export class StepNumbering {
  private n = 0;

  constructor(private readonly total: number | undefined) {}

  /** The line in Docker's words (a step header renumbered), or undefined when it is noise. */
  docker(line: string): string | undefined {
    if (isBuilderNoise(line)) return undefined;
    const m = /^(?:\[\d+\/\d+\] )?STEP \d+\/\d+: (.*)$/.exec(line);
    if (!m) return line;
    this.n++;
    return `Step ${this.n}/${Math.max(this.total ?? this.n, this.n)} : ${m[1]}`;
  }
}
