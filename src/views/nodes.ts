/**
 * The nodes of the tree and their FUSE node ids, with the kernel's reference counts.
 *
 *   1 /   2 /origin   3 /events   4 /status   5 /control   6 /snapshots
 *   16 + 4*seq + 0..3: /snapshots/NAME, its image, cbtmap and info
 *
 * A snapshot's ids come from its sequence number, which is never reused in a mount, so
 * a new snapshot under an old name is a new inode: the kernel can never serve it pages
 * or attributes cached for the old one. A node the kernel still knows (an open image
 * whose snapshot was destroyed) stays in the table, holding its Snapshot object, until
 * the kernel forgets it.
 */
import type { Snapshot } from '../engine/snapshot.js';
import type { NodeId } from './filesystem.js';

export type StaticKind = 'root' | 'origin' | 'events' | 'status' | 'control' | 'snapshots';
export type SnapshotKind = 'snapshot' | 'image' | 'cbtmap' | 'info';

export type Node =
  | { kind: StaticKind; ino: NodeId }
  | { kind: SnapshotKind; ino: NodeId; snapshot: Snapshot };

export const ROOT_ID = 1;
const STATIC: ReadonlyArray<Node> = [
  { kind: 'root', ino: 1 },
  { kind: 'origin', ino: 2 },
  { kind: 'events', ino: 3 },
  { kind: 'status', ino: 4 },
  { kind: 'control', ino: 5 },
  { kind: 'snapshots', ino: 6 },
];
export const ROOT_NAMES: ReadonlyArray<StaticKind> = ['origin', 'events', 'status', 'control', 'snapshots'];
export const SNAPSHOT_FILES: ReadonlyArray<SnapshotKind> = ['image', 'cbtmap', 'info'];
const SNAPSHOT_BASE = 16;
const PER_SNAPSHOT = 4;

export function staticNode(kind: StaticKind): Node {
  const node = STATIC.find((n) => n.kind === kind);
  if (node === undefined) throw new Error(`no static node ${kind}`);
  return node;
}

export function snapshotNode(snapshot: Snapshot, kind: SnapshotKind): Node {
  const offset = kind === 'snapshot' ? 0 : kind === 'image' ? 1 : kind === 'cbtmap' ? 2 : 3;
  return { kind, ino: SNAPSHOT_BASE + PER_SNAPSHOT * snapshot.seq + offset, snapshot };
}

export class NodeTable {
  /** Snapshot nodes the kernel holds references to, with the count. */
  private readonly known = new Map<NodeId, { node: Node; refs: number }>();

  get(ino: NodeId): Node | undefined {
    const fixed = ino < SNAPSHOT_BASE ? STATIC.find((n) => n.ino === ino) : undefined;
    return fixed ?? this.known.get(ino)?.node;
  }

  /** The kernel got `node` from a lookup or mkdir: one more reference. */
  remember(node: Node): void {
    if (node.ino < SNAPSHOT_BASE) return;
    const entry = this.known.get(node.ino);
    if (entry !== undefined) entry.refs++;
    else this.known.set(node.ino, { node, refs: 1 });
  }

  forget(ino: NodeId, count: number): void {
    const entry = this.known.get(ino);
    if (entry === undefined) return;
    entry.refs -= count;
    if (entry.refs <= 0) this.known.delete(ino);
  }

  get size(): number {
    return this.known.size;
  }
}
