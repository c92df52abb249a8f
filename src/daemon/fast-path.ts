/**
 * Wiring the native fast path: the engine shares its state (src/engine/fast-path-state.ts),
 * the transport serves /origin from it in C, the engine keeps the transport's handle so
 * that its close stops native serving before the origin is released, and the C writes
 * are tallied with the engine's for the watch on writes from outside the mount.
 */
import type { SnapshotEngine } from '../engine/engine.js';
import type { Logger } from '../engine/logger.js';
import type { OriginWriteAccounting, OriginWriteTally } from '../engine/origin-write-accounting.js';
import type { FuseSession, NativeFastPath } from '../fuse/transport.js';
import { staticNode } from '../views/nodes.js';

/**
 * The fast path's origin writes as one of the tallies the outside-write watch sums
 * (origin-write-accounting.ts): nothing until it serves, then the addon's own counts.
 * The fast path punches no holes (fallocate goes through the engine): no discards.
 */
export class NativeWriteTally implements OriginWriteAccounting {
  private source: NativeFastPath | null = null;

  servedBy(native: NativeFastPath): void {
    this.source = native;
  }

  tally(): OriginWriteTally {
    const w = this.source?.writes() ?? { begun: 0, ended: 0, pages: 0 };
    return { begun: w.begun, ended: w.ended, pages: w.pages, discardPages: 0 };
  }
}

/**
 * Serve origin requests natively if the transport can; returns whether it does. A
 * failure to attach costs only speed: the engine serves every request, as with
 * fast_path=off, and the log says why.
 */
export function serveOriginNatively(engine: SnapshotEngine, session: FuseSession, log: Logger, writes: NativeWriteTally): boolean {
  if (session.attachFastPath === undefined) return false;
  try {
    writes.servedBy(attach(engine, session.attachFastPath.bind(session)));
    return true;
  } catch (err) {
    log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cannot serve the origin natively; every request goes through the engine');
    return false;
  }
}

function attach(engine: SnapshotEngine, attachFastPath: NonNullable<FuseSession['attachFastPath']>): NativeFastPath {
  const state = engine.shareWithNative();
  const { geometry } = engine;
  const native = attachFastPath({
    header: state.header,
    marks: state.marks,
    cbt: engine.tracker.state.map,
    originFd: engine.origin.fd,
    originIno: staticNode('origin').ino,
    originSize: geometry.originSize,
    chunkSize: geometry.chunkSize,
    blockSize: geometry.blockSize,
    writable: !engine.origin.readOnly,
    onDrained: () => state.recheck(),
  });
  state.serveBy(native);
  return native;
}
