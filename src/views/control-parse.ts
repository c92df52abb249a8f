/**
 * The words of one /control line. Words are separated by spaces or tabs (a trailing
 * carriage return counts as a space, for lines written on Windows). A word that starts
 * with `"` is a JSON string (RFC 8259), so a PATH can hold spaces, quotes and any other
 * character: `storage-append "/srv/my disks/extra.diff" 8G`.
 *
 * Every refusal is EINVAL and names what is wrong; nothing runs for a line that does
 * not parse whole.
 *
 * @example
 *   splitWords('storage-append "/a b/c.diff" 1G')  // ['storage-append', '/a b/c.diff', '1G']
 */
import { BlksnapError } from '../errors.js';

const SPACE = /[ \t\r]/;

function bad(message: string): never {
  throw BlksnapError.of('EINVAL', message);
}

/** The index of the `"` that closes the JSON string opening at `start`, or -1. */
function closingQuote(line: string, start: number): number {
  for (let i = start + 1; i < line.length; i++) {
    const c = line[i];
    if (c === '\\') i++; // the escaped character cannot close the string
    else if (c === '"') return i;
  }
  return -1;
}

function jsonWord(text: string): string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return bad(`${text} is not a valid JSON string`);
  }
  if (typeof value !== 'string') return bad(`${text} is not a valid JSON string`);
  // A lone surrogate (\ud800) has no UTF-8 form: it could only name a different file.
  if (Buffer.from(value, 'utf8').toString('utf8') !== value) bad(`${text} holds a lone UTF-16 surrogate`);
  return value;
}

/** Split a line (without its newline) into words; EINVAL for anything malformed. */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    if (SPACE.test(line[i] ?? '')) {
      i++;
      continue;
    }
    let word: string;
    if (line[i] === '"') {
      const end = closingQuote(line, i);
      if (end < 0) bad('a quoted word has no closing quote');
      word = jsonWord(line.slice(i, end + 1));
      i = end + 1;
      if (i < line.length && !SPACE.test(line[i] ?? '')) bad('a quoted word must be followed by a space or the end of the line');
    } else {
      const start = i;
      while (i < line.length && !SPACE.test(line[i] ?? '')) i++;
      word = line.slice(start, i);
      if (word.includes('"')) bad(`"${word}" holds a quote; write it as a JSON string ("...")`);
    }
    // No file name can hold a NUL byte: a path with one would name a different file.
    if (word.includes('\0')) bad('a word holds a NUL byte');
    words.push(word);
  }
  return words;
}
