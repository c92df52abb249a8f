/**
 * The two pure pieces of change-tracking persistence, case by case: the resume decision
 * (including what no test machine can do for real: a reboot, a partition's whole disk)
 * and the state file's bytes (every single damaged byte is noticed).
 */
import test from 'ava';
import { decideContinuity, type ContinuityInput } from '../src/engine/cbt-continuity.js';
import { decodeCbtState, encodeCbtState, looksLikeCbtState, type CbtState } from '../src/storage/cbt-state-file.js';
import type { OriginFingerprint } from '../src/storage/origin-fingerprint.js';

const file = { dev: '254:0', ino: '42', size: 1 << 20, mtimeNs: '1000', ctimeNs: '1000' };
const imageFp: OriginFingerprint = { kind: 'file', size: 1 << 20, file, rdev: null, diskseq: null, bootId: null, writeCounters: null, backingFile: null };
const deviceFp: OriginFingerprint = { kind: 'block-device', size: 1 << 20, file: null, rdev: '8:1', diskseq: 9, bootId: 'boot-a', writeCounters: '100,0;900,0', backingFile: null };

function saved(origin: OriginFingerprint, state: 'clean' | 'in-use' = 'clean'): CbtState {
  return {
    header: {
      state, block_size: 65536, block_count: 16, generation_id: 'g', generation_started: '2026-01-01T00:00:00.000Z',
      generation_reason: 'first', active_number: 3, saved_at: '2026-01-02T00:00:00.000Z', origin_path: '/x', origin,
    },
    map: state === 'clean' ? new Uint8Array(16).fill(2) : new Uint8Array(0),
  };
}

function decide(was: OriginFingerprint, now: OriginFingerprint, more: Partial<ContinuityInput> = {}): string {
  const bytes = encodeCbtState(saved(was));
  const d = decideContinuity({ saved: { kind: 'ok', state: saved(was), bytes }, origin: now, blockSize: 65536, blockCount: 16, trust: false, ...more });
  return d.resume ? 'resume' : d.reason;
}

test('the resume decision: every doubt is a reset, with its reason', (t) => {
  t.is(decide(imageFp, imageFp), 'resume');
  t.is(decideContinuity({ saved: { kind: 'missing' }, origin: imageFp, blockSize: 65536, blockCount: 16, trust: false }).resume, false);
  const inUse = saved(imageFp, 'in-use');
  t.like(decideContinuity({ saved: { kind: 'ok', state: inUse, bytes: encodeCbtState(inUse) }, origin: imageFp, blockSize: 65536, blockCount: 16, trust: true }), { resume: false, reason: 'unclean' });
  t.is(decide(imageFp, { ...imageFp, file: { ...file, ino: '43' } }), 'origin-changed', 'another file');
  t.is(decide(imageFp, { ...imageFp, file: { ...file, ctimeNs: '1001' } }), 'origin-changed', 'ctime moved');
  t.is(decide(imageFp, { ...imageFp, size: 2 << 20, file: { ...file, size: 2 << 20, mtimeNs: '5' } }), 'capacity', 'resized');
  t.is(decide(imageFp, imageFp, { blockSize: 131072, blockCount: 8 }), 'capacity', 'another block size');
  t.is(decide(imageFp, imageFp, { trust: true }), 'resume');
  t.is(decide(imageFp, deviceFp), 'origin-changed', 'a file then, a device now');

  t.is(decide(deviceFp, deviceFp), 'resume', 'same boot, same device, nothing written');
  const rebooted = { ...deviceFp, bootId: 'boot-b', diskseq: 3, writeCounters: '0,0;0,0' };
  t.is(decide(deviceFp, rebooted), 'origin-changed', 'a reboot');
  t.is(decide(deviceFp, rebooted, { trust: true }), 'resume', 'a reboot, vouched for');
  t.is(decide(deviceFp, { ...rebooted, size: 2 << 20 }, { trust: true }), 'capacity', 'cbt_trust still checks the size');
  t.is(decide(deviceFp, { ...deviceFp, diskseq: 10 }), 'origin-changed', 're-attached');
  t.is(decide(deviceFp, { ...deviceFp, writeCounters: '100,0;908,0' }), 'origin-changed', 'written through the whole disk');
  t.is(decide(deviceFp, { ...deviceFp, writeCounters: null }), 'origin-changed', 'counters unknown');
  const loopFp = { ...deviceFp, backingFile: file };
  t.is(decide(loopFp, { ...loopFp, backingFile: { ...file, mtimeNs: '2000' } }), 'origin-changed', 'backing file written');
});

test('the state file: round trip, and any one damaged byte is caught (or refused as foreign, never trusted)', (t) => {
  const state = saved(imageFp);
  const bytes = encodeCbtState(state);
  const back = decodeCbtState(bytes);
  t.true('state' in back);
  if ('state' in back) {
    t.deepEqual(back.state.header, state.header);
    t.deepEqual([...back.state.map], [...state.map]);
  }
  for (let i = 0; i < bytes.length; i++) {
    const damaged = Buffer.from(bytes);
    damaged[i] = (damaged[i] ?? 0) ^ 0x10;
    t.true(looksLikeCbtState(damaged), `byte ${i}: still recognised as ours`);
    t.true('why' in decodeCbtState(damaged), `byte ${i} flipped was not noticed`);
  }
  for (const n of [0, 7, 47, 48, bytes.length - 1]) t.true('why' in decodeCbtState(bytes.subarray(0, n)), `truncated to ${n}`);
  t.false(looksLikeCbtState(Buffer.from('#!/bin/sh\necho hello\n')));
});
