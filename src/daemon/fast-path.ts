/**
 * Wiring the native fast path: the engine shares its state (src/engine/fast-path-state.ts),
 * the transport serves /origin from it in C, and the engine keeps the transport's handle
 * so that its close stops native serving before the origin is released.
 */
import type { SnapshotEngine } from '../engine/engine.js';
import type { Logger } from '../engine/logger.js';
import type { FuseSession } from '../fuse/transport.js';
import { staticNode } from '../views/nodes.js';

/**
 * Serve origin requests natively if the transport can; returns whether it does. A
 * failure to attach costs only speed: the engine serves every request, as with
 * fast_path=off, and the log says why.
 */
export function serveOriginNatively(engine: SnapshotEngine, session: FuseSession, log: Logger): boolean {
  if (session.attachFastPath === undefined) return false;
  try {
    attach(engine, session.attachFastPath.bind(session));
    return true;
  } catch (err) {
    log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cannot serve the origin natively; every request goes through the engine');
    return false;
  }
}

function attach(engine: SnapshotEngine, attachFastPath: NonNullable<FuseSession['attachFastPath']>): void {
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
}
