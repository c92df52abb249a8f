/**
 * The JSON documents of the tree: /status (the whole mount, for people and scripts)
 * and /snapshots/NAME/info (one snapshot and its change-tracking facts).
 */
import type { SnapshotEngine } from '../engine/engine.js';
import type { Snapshot } from '../engine/snapshot.js';

export interface MountFacts {
  mountpoint: string;
  pid: number;
  mountedAt: Date;
  readOnly: boolean;
  /** Which FUSE binding serves the mount, and its request counters (null before it is up). */
  transport: () => object | null;
  /** How writes made outside the mount are watched, what cannot be seen, what was seen. */
  outsideWrites?: () => object;
}

export function snapshotInfo(engine: SnapshotEngine, snap: Snapshot): object {
  return {
    name: snap.name,
    uuid: snap.uuid,
    created: snap.created.toISOString(),
    state: snap.state,
    error: snap.error,
    error_message: snap.errorMessage,
    device_capacity: snap.deviceCapacity,
    chunk_size: engine.geometry.chunkSize,
    block_size: engine.tracker.blockSize,
    block_count: engine.tracker.blockCount,
    generation_id: snap.cbt.generationId,
    changes_number: snap.cbt.changesNumber,
    // Chunks of its own that writes to its image went to (freed with the snapshot).
    private_chunks: snap.privateChunks.count,
  };
}

export function mountStatus(engine: SnapshotEngine, facts: MountFacts): object {
  const id = engine.origin.identity;
  return {
    mountpoint: facts.mountpoint,
    pid: facts.pid,
    mounted_at: facts.mountedAt.toISOString(),
    read_only: facts.readOnly,
    transport: facts.transport(),
    origin: {
      path: id.path,
      kind: id.kind,
      size: id.size,
      dev: id.dev,
      ino: id.ino,
      rdev: id.rdev,
      diskseq: id.diskseq,
      mode: `0${id.mode.toString(8)}`,
      uid: id.uid,
      gid: id.gid,
    },
    chunk_size: engine.geometry.chunkSize,
    chunk_count: engine.geometry.chunkCount,
    block_size: engine.tracker.blockSize,
    block_count: engine.tracker.blockCount,
    // saved_chunks: copies of origin chunks for snapshots; private_chunks: chunks
    // snapshots own through writes to their images. Both are in `used`.
    diff_storage: { ...engine.storage.stats(), saved_chunks: engine.savedChunks, hole_chunks: engine.savedHoles, private_chunks: engine.privateChunks },
    // null, or when a /control freeze ends by itself unless thawed first.
    frozen_until: engine.freezer.frozenUntil?.toISOString() ?? null,
    change_tracking: {
      generation_id: engine.tracker.generationId,
      // blksnap's cbtinfo meaning: the number of the last period a snapshot closed (the
      // newest snapshot's changes_number; 0 before the first one of this generation).
      changes_number: engine.tracker.activeNumber - 1,
      // The period still open: what writes mark now and the next snapshot will get.
      active_number: engine.tracker.activeNumber,
      // Continuity across mounts: since when this generation has tracked every write, and
      // whether this mount resumed it from the state a clean unmount saved.
      generation_started: engine.tracker.generationStarted.toISOString(),
      generation_reason: engine.tracker.generationReason,
      resumed: engine.tracker.resumedFrom !== null,
      resumed_from_save: engine.tracker.resumedFrom?.toISOString() ?? null,
      state_file: engine.tracker.statePath,
      // Writes to the origin not made through the mount end continuity where they can be
      // seen: how they are watched, what cannot be seen, and what was seen.
      outside_writes: facts.outsideWrites?.() ?? null,
    },
    snapshots: engine.list().map((s) => ({
      name: s.name,
      uuid: s.uuid,
      created: s.created.toISOString(),
      state: s.state,
      error: s.error,
      changes_number: s.cbt.changesNumber,
      generation_id: s.cbt.generationId,
      private_chunks: s.privateChunks.count,
    })),
  };
}

export function jsonBytes(doc: object): Buffer {
  return Buffer.from(`${JSON.stringify(doc, null, 2)}\n`, 'utf8');
}
