/**
 * Real files made slow and unreliable for the engine's model test: every transfer of the
 * origin (OriginDevice read/write) and of the difference storage (DiffStorageFile
 * read/write) is split in two at a random point (an aligned one for O_DIRECT) with a
 * random delay before and between the halves, so other requests run mid-transfer; and
 * a transfer fails with EIO at the given rate.
 *
 * Where a fault may strike, so that the model knows what a failure left behind:
 * - origin writes: before any byte is written (a failed origin write wrote nothing);
 * - origin reads, storage reads and storage writes: before either half (a storage write
 *   that fails after its first half leaves the slot half-written: the engine must then
 *   treat the copy as failed, which is what the model checks).
 *
 * The wrappers replace the instances' methods (the engine calls them at each use).
 */
import { BlksnapError } from '../../src/errors.js';
import type { OriginDevice } from '../../src/storage/origin-device.js';
import type { DiffStorageFile } from '../../src/storage/diff-storage-file.js';
import type { SeededRandom } from './seeded-random.js';

const ALIGN = 4096;

export class SlowIo {
  /** Faults injected so far (the model accepts an error only when one struck meanwhile). */
  faults = 0;
  /** Splitting, delays and faults on or off (off for the final checks). */
  enabled = true;
  /** Transfers seen, for the report. */
  transfers = 0;

  constructor(private readonly rng: SeededRandom, private readonly faultRate: number) {}

  /** A random pause: mostly none or one turn of the event loop, sometimes a timer. */
  private async pause(): Promise<void> {
    if (!this.enabled) return;
    const r = this.rng.next();
    if (r < 0.45) return;
    if (r < 0.97) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      return;
    }
    await new Promise<void>((resolve) => setTimeout(resolve, this.rng.int(2)));
  }

  /** Whether this transfer fails, and before which half (1 or 2); 0 for no fault. */
  private plan(halves: 1 | 2): 0 | 1 | 2 {
    if (!this.enabled || this.faultRate <= 0 || !this.rng.chance(this.faultRate)) return 0;
    return halves === 1 || this.rng.chance(0.5) ? 1 : 2;
  }

  private fault(planned: 0 | 1 | 2, half: 1 | 2, what: string): void {
    if (planned !== half) return;
    this.faults++;
    throw BlksnapError.of('EIO', `injected fault: ${what}`);
  }

  /** Split point in (0, length) on a multiple of `unit`, or 0 for no split. */
  private splitAt(length: number, unit: number): number {
    if (!this.enabled || length < 2 * unit || this.rng.chance(0.25)) return 0;
    return unit * this.rng.between(1, Math.floor(length / unit) - 1 + (length % unit === 0 ? 0 : 1));
  }

  wrapOrigin(origin: OriginDevice): void {
    const read = origin.read.bind(origin);
    const write = origin.write.bind(origin);
    origin.read = async (buf, offset, length, position) => {
      this.transfers++;
      const fault = this.plan(2);
      await this.pause();
      this.fault(fault, 1, 'origin read');
      const k = this.splitAt(length, 1);
      if (k === 0) return read(buf, offset, length, position);
      await read(buf, offset, k, position);
      await this.pause();
      this.fault(fault, 2, 'origin read, second half');
      await read(buf, offset + k, length - k, position + k);
    };
    origin.write = async (buf, offset, length, position) => {
      this.transfers++;
      const fault = this.plan(1);
      await this.pause();
      this.fault(fault, 1, 'origin write');
      const k = this.splitAt(length, 1);
      if (k === 0) return write(buf, offset, length, position);
      await write(buf, offset, k, position);
      await this.pause();
      await write(buf, offset + k, length - k, position + k);
    };
  }

  wrapStorageFile(file: DiffStorageFile): void {
    const read = file.read.bind(file);
    const write = file.write.bind(file);
    file.read = async (buf, length, position) => {
      this.transfers++;
      const fault = this.plan(2);
      await this.pause();
      this.fault(fault, 1, 'storage read');
      const k = this.splitAt(length, ALIGN);
      if (k === 0 || k >= length) return read(buf, length, position);
      await read(buf, k, position);
      await this.pause();
      this.fault(fault, 2, 'storage read, second half');
      await read(buf.subarray(k), length - k, position + k);
    };
    file.write = async (buf, length, position) => {
      this.transfers++;
      const fault = this.plan(2);
      await this.pause();
      this.fault(fault, 1, 'storage write');
      const k = this.splitAt(length, ALIGN);
      if (k === 0 || k >= length) return write(buf, length, position);
      await write(buf, k, position);
      await this.pause();
      this.fault(fault, 2, 'storage write, second half');
      await write(buf.subarray(k), length - k, position + k);
    };
  }
}
