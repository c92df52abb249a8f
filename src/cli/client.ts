/**
 * What the CLI does to a mounted blksnapfs: everything goes through the mount's own
 * files (mkdir, rmdir, /status, /control), so the CLI can do nothing a shell user could
 * not, and needs no private channel to the daemon.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

export interface StatusDoc {
  mountpoint: string;
  pid: number;
  origin: { path: string; size: number };
  snapshots: Array<{ name: string; state: string; created: string; changes_number: number; generation_id: string }>;
  [key: string]: unknown;
}

export interface InfoDoc {
  name: string;
  uuid: string;
  created: string;
  state: string;
  error: string | null;
  device_capacity: number;
  block_size: number;
  block_count: number;
  generation_id: string;
  changes_number: number;
  chunk_size: number;
}

export async function readStatus(mount: string): Promise<StatusDoc> {
  return JSON.parse(await fsp.readFile(join(mount, 'status'), 'utf8')) as StatusDoc;
}

export async function readInfo(mount: string, name: string): Promise<InfoDoc> {
  return JSON.parse(await fsp.readFile(join(mount, 'snapshots', name, 'info'), 'utf8')) as InfoDoc;
}

export async function takeSnapshot(mount: string, name: string): Promise<void> {
  await fsp.mkdir(join(mount, 'snapshots', name));
}

export async function destroySnapshot(mount: string, name: string): Promise<void> {
  await fsp.rmdir(join(mount, 'snapshots', name));
}

export async function sendControl(mount: string, line: string): Promise<void> {
  const fh = await fsp.open(join(mount, 'control'), 'w');
  try {
    await fh.write(`${line}\n`);
  } finally {
    await fh.close();
  }
}

export async function readCbtmap(mount: string, name: string): Promise<Buffer> {
  return fsp.readFile(join(mount, 'snapshots', name, 'cbtmap'));
}
