/** Linux device numbers as "major:minor" (glibc's major()/minor() decoding of st_dev). */
export function majorMinor(dev: number): string {
  const major = ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
  const minor = (dev & 0xff) | ((dev >>> 12) & ~0xff);
  return `${major}:${minor}`;
}
