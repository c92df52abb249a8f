/**
 * Permission bits of the tree, derived from the origin's own mode so that the mount
 * never grants anyone more than the origin does (the kernel checks them: the mount
 * always has default_permissions).
 *
 * - /origin and images: the origin's read and write bits (no write bits with -o ro;
 *   an image write changes only that image, but it is still a write to the origin's
 *   data as of the snapshot, so it needs what a write to the origin needs).
 * - cbtmap, info, status, events: readable by whoever may read the origin.
 * - directories: searchable and listable by the owner and whoever may read the
 *   origin; only the owner may take or destroy snapshots (write on /snapshots).
 * - /control: the mount's owner only (root passes the kernel's check anyway).
 */
const READ_BITS = 0o444;
const WRITE_BITS = 0o222;

export interface TreeModes {
  origin: number;
  image: number;
  readOnlyFile: number;
  directory: number;
  snapshotsDir: number;
  control: number;
}

export function treeModes(originMode: number, readOnly: boolean): TreeModes {
  const read = originMode & READ_BITS;
  const write = readOnly ? 0 : originMode & WRITE_BITS;
  // r-x for each class that may read the origin.
  const listable = read | (read >> 2);
  return {
    origin: read | write,
    image: read | write,
    readOnlyFile: read,
    directory: listable | 0o500,
    snapshotsDir: listable | 0o700,
    control: 0o200,
  };
}
