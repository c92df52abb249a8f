/**
 * The two small pieces behind /control, without a mount: line assembly across writes
 * (where the cut falls must not matter) and the words of a line (JSON strings included).
 */
import test from 'ava';
import { LineAssembler, MAX_LINE_BYTES, type CompletedLine } from '../src/views/control-lines.js';
import { splitWords } from '../src/views/control-parse.js';

const text = (lines: CompletedLine[]): string[] => lines.map((l) => (l.kind === 'line' ? l.bytes.toString() : '<too-long>'));

test('lines come out whole wherever the writes cut them', (t) => {
  const input = 'storage-append /a 16M\ncbt-dirty 0 65536\n\nthaw\n';
  for (let cut1 = 0; cut1 <= input.length; cut1++) {
    for (let cut2 = cut1; cut2 <= input.length; cut2 += 3) {
      const a = new LineAssembler();
      const out = [input.slice(0, cut1), input.slice(cut1, cut2), input.slice(cut2)].flatMap((p) => text(a.push(Buffer.from(p))));
      t.deepEqual(out, ['storage-append /a 16M', 'cbt-dirty 0 65536', '', 'thaw']);
      t.is(a.finish(), null);
    }
  }
});

test('a last line without a newline comes out at finish; an over-long line once, and its rest is dropped', (t) => {
  const a = new LineAssembler();
  t.deepEqual(text(a.push(Buffer.from('thaw'))), []);
  t.deepEqual(a.finish(), { kind: 'line', bytes: Buffer.from('thaw') });

  const b = new LineAssembler();
  t.deepEqual(text(b.push(Buffer.alloc(MAX_LINE_BYTES, 0x61))), [], 'exactly the limit is fine');
  t.deepEqual(text(b.push(Buffer.from('\n'))), ['a'.repeat(MAX_LINE_BYTES)]);
  t.deepEqual(text(b.push(Buffer.alloc(MAX_LINE_BYTES + 1, 0x61))), ['<too-long>']);
  t.deepEqual(text(b.push(Buffer.alloc(10_000, 0x61))), [], 'reported once');
  t.deepEqual(text(b.push(Buffer.from('tail\nthaw\n'))), ['thaw']);
  t.is(b.finish(), null);
});

test('an abandoned line is dropped up to its newline; a line that had ended is not affected', (t) => {
  const a = new LineAssembler();
  a.push(Buffer.from('bad\ncbt-dirty 0'));
  a.abandonCurrentLine();
  t.deepEqual(text(a.push(Buffer.from(' 1\nthaw\n'))), ['thaw']);
  a.push(Buffer.from('bad\n'));
  a.abandonCurrentLine();
  t.deepEqual(text(a.push(Buffer.from('thaw\n'))), ['thaw']);
});

test('words: spaces and tabs separate, JSON strings hold anything but NUL and lone surrogates', (t) => {
  t.deepEqual(splitWords('  storage-append\t/a/b   1M \r'), ['storage-append', '/a/b', '1M']);
  t.deepEqual(splitWords('storage-append "/my disks/\\"x\\"\\t\\u00e9\\ud83d\\ude00" 1M'), ['storage-append', '/my disks/"x"\té😀', '1M']);
  t.deepEqual(splitWords('""'), ['']);
  t.deepEqual(splitWords(''), []);
  for (const bad of ['"/a', '"/a"b 1', '/a"b', '"\\q"', '"\\u0000"', '/a\0b', '"\\ud800"', '"a\nb"']) {
    t.throws(() => splitWords(bad), { code: 'EINVAL' }, JSON.stringify(bad));
  }
});
