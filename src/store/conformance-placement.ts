/** The placement part of the store conformance suite (claims, generations, server groups). PLACEHOLDER until the scheduler lands. */
import type { ConformanceTarget } from './conformance.js';

export function placementConformance(_name: string, _open: () => Promise<ConformanceTarget>): void {}
