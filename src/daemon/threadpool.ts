/**
 * The size of libuv's thread pool for the daemon. Every origin read and write is a
 * blocking pread/pwrite on a pool thread, so the pool bounds how many of the requests
 * the kernel keeps in flight (up to 64 with libfuse 3) are actually served at once:
 * with the default 4, a 4 KiB random read at queue depth 16 that misses the page cache
 * waits for one of 4 threads (13k IOPS here); with 32, 20k. libuv reads the variable at
 * its first use of the pool, so this must run before any asynchronous file operation.
 * A value the user set is kept.
 */
export const DAEMON_THREADPOOL_SIZE = 32;

export function sizeThreadPool(env: NodeJS.ProcessEnv = process.env): void {
  env['UV_THREADPOOL_SIZE'] ??= String(DAEMON_THREADPOOL_SIZE);
}
