/**
 * Progress of a long copy, three ways:
 * - `tty`: one bar redrawn in place on stderr, at most ten times a second;
 * - `plain`: a line on stderr at every tenth of a phase (logs, pipes, cron mail);
 * - `json`: a JSON line on stdout at every whole percent, for scripts
 *   (`{"type":"progress","phase":"copy","done_bytes":..,"total_bytes":..,"percent":..}`),
 *   and notes as `{"type":"note","message":..}`.
 *
 * @example
 *   const p = createProgress(json ? 'json' : process.stderr.isTTY ? 'tty' : 'plain', 'backup');
 *   p.phase('copy', total); p.advance(n); ...; p.end();
 */
export type ProgressMode = 'tty' | 'plain' | 'json';

export interface Progress {
  /** Start a phase of `total` bytes (ends the previous one). */
  phase(name: string, total: number): void;
  advance(bytes: number): void;
  /** A message for the user (a fallback, a recovery). */
  note(message: string): void;
  /** End the current phase. */
  end(): void;
}

export function humanBytes(n: number): string {
  const units = ['B', 'K', 'M', 'G', 'T'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n}B` : `${v.toFixed(1)}${units[u] ?? ''}`;
}

function clock(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const mm = String(m).padStart(h > 0 ? 2 : 1, '0');
  return `${h > 0 ? `${h}:` : ''}${mm}:${String(s % 60).padStart(2, '0')}`;
}

export function createProgress(mode: ProgressMode, label: string): Progress {
  let name = '';
  let total = 0;
  let done = 0;
  let started = 0;
  let lastDraw = 0;
  let lastStep = -1;
  let open = false;

  const percent = (): number => (total === 0 ? 100 : Math.floor((done / total) * 100));
  const rate = (): number => {
    const secs = (Date.now() - started) / 1000;
    return secs > 0 ? done / secs : 0;
  };

  const draw = (final: boolean): void => {
    const p = percent();
    if (mode === 'json') {
      if (p === lastStep) return;
      lastStep = p;
      process.stdout.write(`${JSON.stringify({ type: 'progress', phase: name, done_bytes: done, total_bytes: total, percent: p, bytes_per_second: Math.round(rate()) })}\n`);
      return;
    }
    if (mode === 'plain') {
      const step = Math.floor(p / 10);
      if (step === lastStep) return;
      lastStep = step;
      process.stderr.write(`${label}: ${name} ${p}% (${humanBytes(done)} of ${humanBytes(total)})\n`);
      return;
    }
    const now = Date.now();
    if (!final && now - lastDraw < 100) return;
    lastDraw = now;
    const width = 30;
    const filled = total === 0 ? width : Math.min(width, Math.floor((done / total) * width));
    const r = rate();
    const eta = r > 0 ? (total - done) / r : Number.POSITIVE_INFINITY;
    const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
    process.stderr.write(`\r\x1b[K${label} ${name} [${bar}] ${String(p).padStart(3)}% ${humanBytes(done)}/${humanBytes(total)} ${humanBytes(r)}/s ETA ${clock(eta)}${final ? '\n' : ''}`);
  };

  const progress: Progress = {
    phase(phaseName, phaseTotal) {
      if (open) progress.end();
      name = phaseName;
      total = phaseTotal;
      done = 0;
      started = Date.now();
      lastDraw = 0;
      lastStep = -1;
      open = true;
      draw(false);
    },
    advance(bytes) {
      done += bytes;
      draw(false);
    },
    note(message) {
      if (mode === 'json') process.stdout.write(`${JSON.stringify({ type: 'note', message })}\n`);
      else process.stderr.write(`${mode === 'tty' && open ? '\r\x1b[K' : ''}${label}: ${message}\n`);
    },
    end() {
      if (!open) return;
      open = false;
      draw(true);
    },
  };
  return progress;
}
