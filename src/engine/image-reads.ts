/**
 * Reads of snapshot images: where each chunk of an image read comes from, the runs it
 * is read in, and the caches that make small and sequential reads of saved chunks cheap.
 *
 * One image read:
 *   1. decide, chunk by chunk and in one synchronous pass, where each chunk comes from:
 *        private copy of the snapshot (written through the image)  -> its slot
 *        saved copy serving the snapshot (copy-table.ts)           -> its slot
 *        the origin still holds it                                 -> the origin, and the
 *                                                                     read registers as
 *                                                                     that chunk's reader
 *        saved as a hole (HOLE_SLOT)                               -> zeros
 *        its copy failed                                           -> EIO (nothing read)
 *      The decision and the origin reader's registration are one synchronous call per
 *      chunk (chunk-copy.ts `startRead`): an origin write to that chunk saves it first
 *      and then waits for this reader, so an image read never gets bytes newer than its
 *      snapshot.
 *   2. cut it into runs, each one read: adjacent origin chunks (one buffered read of the
 *      origin), adjacent hole chunks (one fill), and saved (or private) chunks whose
 *      slots lie in a row in one storage file, whether or not they are adjacent in the
 *      image (one O_DIRECT read of at most READ_RUN_BYTES, straight into the caller's
 *      buffer when it is aligned and the run is in image order, else through a pooled
 *      buffer). After a sequential overwrite of every other chunk, the saved half of a
 *      1 MiB read is one 512 KiB storage read.
 *   3. read every run at once; answer once every run has settled.
 *
 * Caches: saved slots never change while a snapshot can read it, but a freed slot is
 * reused for other data, so whoever is about to fill a slot calls `slotReused` first.
 * Small reads (less than a window) of a saved chunk go through a window cache; a
 * sequential reader gets the saved chunks ahead of it read ahead in large storage
 * reads (saved-read-ahead.ts). Private chunks change with every image write: never
 * cached nor read ahead.
 */
import { BlksnapError } from '../errors.js';
import type { OriginDevice } from '../storage/origin-device.js';
import { AlignedBufferPool, DIRECT_IO_ALIGNMENT, alignDown, alignUp } from '../storage/aligned.js';
import { addressOf } from '../storage/native.js';
import type { ChunkCopies } from './chunk-copy.js';
import { HOLE_SLOT } from './copy-table.js';
import type { ExceptionStore } from './exception-store.js';
import { chunkPieces, type ChunkPiece, type Geometry } from './geometry.js';
import { SavedReadAhead } from './saved-read-ahead.js';
import { SavedWindowCache } from './saved-window-cache.js';
import type { Snapshot } from './snapshot.js';

/** Window of a small read of a saved chunk, read whole and cached for its neighbours. */
const READ_WINDOW = 256 * 1024;
/** Largest O_DIRECT read of a run of saved slots (and of one read-ahead span). */
const READ_RUN_BYTES = 1024 * 1024;
/** Pooled buffers for runs that cannot be read straight into the caller's buffer. */
const RUN_BUFFERS = 16;
/** Image bytes past a sequential reader whose saved chunks are read ahead. */
const READ_AHEAD_BYTES = 8 * 1024 * 1024;

type Source = 'origin' | 'saved' | 'private' | 'hole';

/** One chunk's share of an image read, and where it comes from. */
interface Part extends ChunkPiece {
  source: Source;
  /** The slot for saved and private parts. */
  slot: number;
}

/** Parts read with one request (or one fill). */
interface Run {
  source: Source;
  /** Image order for origin and hole; slot order (consecutive slots) for saved and private. */
  parts: Part[];
}

export interface ImageReadParts {
  origin: OriginDevice;
  store: ExceptionStore;
  geometry: Geometry;
  /** Where a snapshot finds a chunk now (saved copy or origin, with reader registration). */
  sources: ChunkCopies;
}

export class ImageReads {
  /** Aligned window buffers for O_DIRECT reads of slots (image writes borrow them too). */
  readonly windows: AlignedBufferPool;
  private readonly runBuffers = new AlignedBufferPool(READ_RUN_BYTES, RUN_BUFFERS, { lazy: true });
  private readonly readAhead = new SavedReadAhead(READ_RUN_BYTES, READ_AHEAD_BYTES);
  private readonly windowCache = new SavedWindowCache();
  /** Where each snapshot's next sequential image read would start. */
  private readonly nextImageRead = new WeakMap<Snapshot, number>();
  /** The chunk up to which a sequential reader's origin chunks were hinted to the kernel. */
  private readonly hintedTo = new WeakMap<Snapshot, number>();
  private readonly chunkSize: number;

  constructor(private readonly parts: ImageReadParts) {
    this.chunkSize = parts.geometry.chunkSize;
    this.windows = new AlignedBufferPool(Math.min(this.chunkSize, READ_WINDOW), 32);
  }

  /** `slot` is about to hold new data: forget whatever the caches hold of its previous life. */
  slotReused(slot: number): void {
    this.windowCache.allocated(slot);
    this.readAhead.forget(slot * this.chunkSize, (slot + 1) * this.chunkSize);
  }

  /**
   * Read `length` bytes of the image of `snap` at `position` into buf[offset...]. Every
   * run has settled before this returns or throws: a run still reading into `buf` after
   * the reply would write into a buffer the caller has moved on with. The caller checked
   * the range and the snapshot's state.
   */
  async read(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    const runs = this.runsOf(this.decide(snap, position, length));
    const reads = runs.map((run) => this.readRun(run, buf, offset));
    // A sequential reader: start reading the saved chunks just past this request.
    if (this.nextImageRead.get(snap) === position) this.readAheadImage(snap, Math.floor((position + length) / this.chunkSize));
    this.nextImageRead.set(snap, position + length);
    if (reads.length === 1) {
      await reads[0];
      return;
    }
    const outcomes = await Promise.allSettled(reads);
    for (const outcome of outcomes) if (outcome.status === 'rejected') throw outcome.reason;
  }

  /**
   * Where each chunk of the read comes from, in one synchronous pass; the chunks read
   * from the origin are registered as read (see the header). A lost chunk fails the
   * whole read before anything is read, and lets go of the registrations made.
   */
  private decide(snap: Snapshot, position: number, length: number): Part[] {
    const { sources } = this.parts;
    const parts: Part[] = [];
    for (const piece of chunkPieces(this.chunkSize, position, length)) {
      const own = snap.privateChunks.slotOf(piece.chunk);
      if (own >= 0) {
        parts.push({ ...piece, source: 'private', slot: own });
        continue;
      }
      const found = sources.startRead(piece.chunk, snap.seq);
      if (found.from === 'lost') {
        for (const p of parts) if (p.source === 'origin') sources.doneReading(p.chunk);
        throw BlksnapError.of('EIO', `snapshot ${snap.name} lost chunk ${piece.chunk}`);
      }
      parts.push({ ...piece, source: found.from, slot: found.from === 'saved' ? found.slot : -1 });
    }
    return parts;
  }

  /** Cut the parts into runs (see the header). */
  private runsOf(parts: Part[]): Run[] {
    const runs: Run[] = [];
    const stored: Record<'saved' | 'private', Part[]> = { saved: [], private: [] };
    let last: Run | null = null;
    for (const part of parts) {
      if (part.source === 'saved' || part.source === 'private') {
        stored[part.source].push(part);
        last = null;
      } else if (last !== null && last.source === part.source) {
        last.parts.push(part); // parts are adjacent chunks, in order
      } else {
        last = { source: part.source, parts: [part] };
        runs.push(last);
      }
    }
    const maxSlots = Math.max(1, Math.floor(READ_RUN_BYTES / this.chunkSize));
    for (const source of ['saved', 'private'] as const) {
      const list = stored[source];
      if (list.length > 1) list.sort((a, b) => a.slot - b.slot);
      let run: Run | null = null;
      let room = 0;
      for (const part of list) {
        const prev = run?.parts[run.parts.length - 1];
        if (run !== null && prev !== undefined && part.slot === prev.slot + 1 && run.parts.length < room) {
          run.parts.push(part);
          continue;
        }
        run = { source, parts: [part] };
        room = this.parts.store.contiguous(part.slot, maxSlots);
        runs.push(run);
      }
    }
    return runs;
  }

  private async readRun(run: Run, buf: Buffer, offset: number): Promise<void> {
    const first = run.parts[0];
    if (first === undefined) return;
    const bytes = run.parts.reduce((n, p) => n + p.length, 0);
    switch (run.source) {
      case 'hole': // saved as a hole: zeros, nothing to read
        buf.fill(0, offset + first.done, offset + first.done + bytes);
        return;
      case 'origin': {
        const { origin, sources } = this.parts;
        try {
          await origin.read(buf, offset + first.done, bytes, first.chunk * this.chunkSize + first.inChunk);
        } finally {
          for (const p of run.parts) sources.doneReading(p.chunk);
        }
        return;
      }
      case 'saved':
      case 'private':
        await this.readStored(run.parts, run.source === 'saved', buf, offset);
    }
  }

  /**
   * Parts whose slots are consecutive in one file (slot order), with one O_DIRECT read,
   * unless they are all held by read-ahead already. A lone small read of a saved chunk
   * goes through the window cache instead.
   */
  private async readStored(parts: Part[], cacheable: boolean, buf: Buffer, offset: number): Promise<void> {
    const cs = this.chunkSize;
    const first = parts[0];
    if (first === undefined) return;
    if (cacheable && parts.length === 1 && first.length < this.windows.bufferSize) {
      await this.readSmall(first.slot, first.inChunk, first.length, buf, offset + first.done);
      return;
    }
    const base = first.slot;
    // Slot-space bytes of each part, relative to the start of `base`.
    const from = (p: Part): number => (p.slot - base) * cs + p.inChunk;
    if (cacheable && parts.every((p) => this.readAhead.find(p.slot * cs + p.inChunk, p.slot * cs + p.inChunk + p.length) !== null)) {
      const taken = await Promise.all(parts.map((p) => this.readAhead.copyOut(p.slot * cs + p.inChunk, p.slot * cs + p.inChunk + p.length, buf, offset + p.done)));
      const missed = parts.filter((_p, i) => taken[i] !== true);
      // Invalidated or failed while we waited: read those parts one by one.
      await Promise.all(missed.map((p) => this.readStored([p], false, buf, offset)));
      return;
    }
    let start = Infinity;
    let end = 0;
    for (const p of parts) {
      start = Math.min(start, from(p));
      end = Math.max(end, from(p) + p.length);
    }
    const { store } = this.parts;
    // In image order, aligned at both ends and in an aligned buffer: straight into it.
    const inOrder = parts.every((p, i) => i === 0 || p.chunk === (parts[i - 1]?.chunk ?? -2) + 1);
    const into = offset + first.done;
    if (inOrder && start % DIRECT_IO_ALIGNMENT === 0 && end % DIRECT_IO_ALIGNMENT === 0 && addressOf(buf.subarray(into)) % BigInt(DIRECT_IO_ALIGNMENT) === 0n) {
      await store.read(base, start, end - start, buf.subarray(into, into + end - start));
      return;
    }
    const size = this.runBuffers.bufferSize;
    for (let w = alignDown(start); w < end; w += size) {
      const wEnd = Math.min(alignUp(end), w + size);
      const tmp = await this.runBuffers.acquire();
      try {
        await store.read(base, w, wEnd - w, tmp);
        for (const p of parts) {
          const a = Math.max(from(p), w);
          const b = Math.min(from(p) + p.length, wEnd);
          if (a < b) tmp.copy(buf, offset + p.done + (a - from(p)), a - w, b - w);
        }
      } finally {
        this.runBuffers.release(tmp);
      }
    }
  }

  /**
   * Queue reads of the saved chunks from chunk `from` on (READ_AHEAD_BYTES of image), in
   * storage order and in spans of slots in a row (see SavedReadAhead), and hint the
   * kernel about the origin's chunks of the window that were not hinted yet.
   */
  private readAheadImage(snap: Snapshot, from: number): void {
    const { sources, store, origin, geometry } = this.parts;
    const cs = this.chunkSize;
    const to = Math.min(geometry.chunkCount - 1, from + Math.max(1, Math.floor(READ_AHEAD_BYTES / cs)) - 1);
    const hinted = this.hintedTo.get(snap) ?? -1;
    const hintFrom = hinted >= from && hinted <= to + 1 ? hinted : from;
    const slots: number[] = [];
    let originRun = -1; // first chunk of the origin chunks being gathered for a hint
    for (let c = from; c <= to + 1; c++) {
      let fromOrigin = false;
      // Private chunks are read from their own copy, never cached.
      if (c <= to && snap.privateChunks.slotOf(c) < 0) {
        const slot = sources.savedSlot(c, snap.seq);
        if (slot === HOLE_SLOT) {
          // zeros: nothing to read ahead, nothing to hint
        } else if (slot >= 0) {
          slots.push(slot);
        } else {
          fromOrigin = true;
        }
      }
      // The kernel's own read-ahead loses track of a reader that skips the saved chunks:
      // hint each stretch of origin chunks once (saved chunks' origin data is not needed).
      if (fromOrigin && c >= hintFrom) {
        if (originRun < 0) originRun = c;
      } else if (originRun >= 0) {
        origin.willNeed(originRun * cs, (c - originRun) * cs);
        originRun = -1;
      }
    }
    this.hintedTo.set(snap, to + 1);
    slots.sort((a, b) => a - b);
    const unit = this.readAhead.unit;
    for (let i = 0; i < slots.length;) {
      // A stretch of consecutive slots in one file...
      const head = slots[i] ?? 0;
      const room = store.contiguous(head, slots.length - i);
      let n = 1;
      while (n < room && slots[i + n] === head + n) n++;
      i += n;
      // ...read in spans that end at multiples of `unit`, so that the spans of later
      // requests line up with these.
      const stretchEnd = (head + n) * cs;
      for (let s = head * cs; s < stretchEnd;) {
        const e = Math.min(stretchEnd, (Math.floor(s / unit) + 1) * unit);
        this.readAhead.start(s, e, (b, a, z) => {
          const slot = Math.floor(a / cs);
          return store.read(slot, a - slot * cs, z - a, b);
        });
        s = e;
      }
    }
  }

  /**
   * A small read (less than a window) of one saved chunk: from read-ahead, from the
   * window cache, or by reading the whole aligned window into the cache.
   */
  private async readSmall(slot: number, inChunk: number, length: number, buf: Buffer, offset: number): Promise<void> {
    const end = inChunk + length;
    const size = this.windows.bufferSize;
    const base = slot * this.chunkSize;
    for (let window = Math.floor(inChunk / size) * size; window < end; window += size) {
      const from = Math.max(inChunk, window);
      const to = Math.min(end, window + size);
      const at = offset + (from - inChunk);
      if (await this.readAhead.copyOut(base + from, base + to, buf, at)) continue;
      const cached = this.windowCache.get(slot, window);
      if (cached !== undefined) {
        cached.copy(buf, at, from - window, to - window);
        continue;
      }
      const tmp = await this.windows.acquire();
      try {
        await this.parts.store.read(slot, window, size, tmp);
        tmp.copy(buf, at, from - window, to - window);
        this.windowCache.set(slot, window, Buffer.from(tmp.subarray(0, size)));
      } finally {
        this.windows.release(tmp);
      }
    }
  }
}
