/**
 * Sizes as users write them: a number of bytes with an optional K, M, G or T suffix
 * (powers of 1024, an optional trailing B or iB), e.g. 4K, 1G, 1.5M, 65536.
 */
import { BlksnapError } from './errors.js';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  const unit = m === null ? undefined : UNITS[(m[2] ?? '').toUpperCase()];
  if (m === null || unit === undefined) throw BlksnapError.of('EINVAL', `bad size "${text}" (use bytes or a K, M, G, T suffix)`);
  const bytes = Number(m[1]) * unit;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw BlksnapError.of('EINVAL', `bad size "${text}" (must be a positive whole number of bytes)`);
  return bytes;
}

export function formatSize(bytes: number): string {
  for (const [suffix, unit] of [['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (bytes >= unit && bytes % unit === 0) return `${bytes / unit}${suffix}`;
  }
  return `${bytes}`;
}

/** For people: at most one decimal, e.g. 32.4M, 1G, 512K, 100 bytes as 100. */
export function humanSize(bytes: number): string {
  for (const [suffix, unit] of [['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (bytes >= unit) return `${Number((bytes / unit).toFixed(1))}${suffix}`;
  }
  return `${bytes}`;
}
