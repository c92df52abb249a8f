/**
 * `umount M && mount.blksnapfs SAME_ORIGIN M` must work every time: after umount(2)
 * returns, the old daemon still holds the origin's lock while it drains, datasyncs and
 * removes its difference storage. So a mount that finds the origin locked waits
 * (bounded) for a daemon that is shutting down; if a live blksnapfs mount of the same
 * origin exists, it is EBUSY at once.
 */
import { BlksnapError } from '../errors.js';
import { OriginDevice } from '../storage/origin-device.js';
import { escapeMountPath, readMounts } from '../fuse/mountinfo.js';

const WAIT_MS = 10_000;
const RETRY_MS = 50;

async function liveMountOf(originPath: string): Promise<string | null> {
  const source = escapeMountPath(originPath);
  const live = (await readMounts()).find((m) => m.fstype === 'fuse.blksnapfs' && m.source === source);
  return live === undefined ? null : live.mountpoint;
}

export async function openOriginWhenFree(path: string, options: { readOnly: boolean }): Promise<OriginDevice> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try {
      return await OriginDevice.open(path, options);
    } catch (err) {
      if (!(err instanceof BlksnapError) || !OriginDevice.isLockedByBlksnapfs(err)) throw err;
      const live = await liveMountOf(path);
      if (live !== null) throw BlksnapError.of('EBUSY', `origin ${path} is already mounted by blksnapfs on ${live}`);
      if (Date.now() >= deadline) {
        throw BlksnapError.of('EBUSY', `origin ${path} is still held by a blksnapfs daemon that is shutting down (after umount -l, files of it may still be open)`);
      }
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }
}
