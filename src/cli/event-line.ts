/**
 * One line of MOUNT/events as `blksnapfs events` prints it.
 *
 * Event fields carry text that came from outside (paths given to storage-append, error
 * messages that quote them). Decoded from JSON, "\u001b[2J" is a real escape sequence,
 * and printed raw it would drive the reader's terminal (clear it, retitle it, fake
 * lines). So every control character (C0, DEL, C1) is printed as an escape: `\xNN` in
 * the readable form, `\u00NN` in the JSON form (still valid, equal JSON).
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;

const hex2 = (c: string): string => c.charCodeAt(0).toString(16).padStart(2, '0');

/** `text` with each control character written as `\xNN`. */
export function escapeControls(text: string): string {
  return text.replace(CONTROL, (c) => `\\x${hex2(c)}`);
}

/** A raw line made safe: control characters become JSON's `\u00NN` (a JSON line stays the same JSON). */
export function escapeControlsJson(line: string): string {
  return line.replace(CONTROL, (c) => `\\u00${hex2(c)}`);
}

function show(value: unknown): string {
  return escapeControls(typeof value === 'string' ? value : JSON.stringify(value) ?? String(value));
}

/** The readable form: `TIME #SEQ TYPE key=value ...`; a line that is not JSON is shown escaped. */
export function formatEventLine(line: string): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return escapeControls(line);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return escapeControls(line);
  const { seq, time, type, ...rest } = parsed as Record<string, unknown>;
  const fields = Object.entries(rest).map(([k, v]) => `${escapeControls(k)}=${show(v)}`).join(' ');
  return `${show(time)} #${seq === undefined ? '-' : show(seq)} ${show(type)} ${fields}`;
}
