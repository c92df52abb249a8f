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
const deviceFp: OriginFingerprint = {
  kind: 'block-device', size: 1 << 20, file: null, rdev: '8:1', diskseq: 9, bootId: 'boot-a', writeCounters: '100,0;900,0', backingFile: null,
  identity: 'wwid:naa.5000c500a1b2c3d4 partition 1 start 2048', unknown: [],
};

function saved(origin: OriginFingerprint, state: 'clean' | 'in-use' | 'unproven' = 'clean'): CbtState {
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

test('what cannot be read proves nothing; the disk must be the same one, cbt_trust or not; an unproven save never resumes', (t) => {
  // Unknown parts (defects 7 and 8): a reset, then or now, unless cbt_trust vouches.
  const statsOff = { ...deviceFp, writeCounters: null, unknown: ['the write counters: the I/O statistics are off (queue/iostats is 0)'] };
  t.is(decide(statsOff, statsOff), 'origin-changed', 'iostats off, then and now: counters that stand still prove nothing');
  t.is(decide(deviceFp, statsOff), 'origin-changed');
  t.is(decide(statsOff, deviceFp), 'origin-changed');
  t.is(decide(statsOff, statsOff, { trust: true }), 'resume', 'cbt_trust vouches for writes');
  const loopFp = { ...deviceFp, identity: 'loop:254:0:77 offset 0 sizelimit 0', backingFile: file };
  const goneBacking = { ...loopFp, backingFile: null, unknown: ["the loop device's backing file: /x cannot be looked at (ENOENT)"] };
  t.is(decide(goneBacking, goneBacking), 'origin-changed', 'two unknowable backing files are not equal');
  t.is(decide(loopFp, goneBacking), 'origin-changed');
  // What older versions saved for a backing file they could not stat.
  const placeholder = { dev: '?', ino: '?', size: -1, mtimeNs: '?', ctimeNs: '?' };
  const old = { ...loopFp, backingFile: placeholder };
  delete old.unknown;
  t.is(decide(old, { ...loopFp, backingFile: placeholder }), 'origin-changed', 'the old placeholder proves nothing either');

  // Identity (defect 8): two same-size disks that swapped names are refused, with or without cbt_trust.
  const other = { ...deviceFp, identity: 'wwid:naa.5000c500ffffffff partition 1 start 2048' };
  t.is(decide(deviceFp, other), 'origin-changed');
  t.is(decide(deviceFp, other, { trust: true }), 'origin-changed', 'cbt_trust vouches for writes, not for which disk');
  t.is(decide(deviceFp, { ...deviceFp, identity: null }, { trust: true }), 'origin-changed', 'an identity that is gone');
  const noIdentity = { ...deviceFp, identity: null };
  t.is(decide(noIdentity, { ...noIdentity, bootId: 'boot-b' }, { trust: true }), 'resume', 'a disk the kernel knows no identity of: path and size only');
  const legacy = { ...deviceFp };
  delete legacy.identity;
  t.is(decide(legacy, { ...deviceFp, bootId: 'boot-b' }, { trust: true }), 'origin-changed', 'a state saved without the identity cannot be vouched for');
  t.is(decide(legacy, deviceFp), 'resume', 'without cbt_trust the same boot, numbers and counters prove it');

  // A save that saw a write from outside (defect 6).
  const unproven = saved(imageFp, 'unproven');
  unproven.header.unproven = 'process 42 wrote the origin file';
  const d = decideContinuity({ saved: { kind: 'ok', state: unproven, bytes: encodeCbtState(unproven) }, origin: imageFp, blockSize: 65536, blockCount: 16, trust: true });
  t.like(d, { resume: false, reason: 'origin-changed' });
  t.regex(d.resume ? '' : d.detail, /process 42/);
  t.true('state' in decodeCbtState(encodeCbtState(unproven)), 'an unproven state file reads back');
});
