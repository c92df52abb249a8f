#!/usr/bin/env node
// blksnapfs command-line tool (compiled TypeScript lives in dist/).
// Exit explicitly: fuse-native's native handles would otherwise keep a foreground
// daemon's process alive after its mount is gone. (stdout/stderr are synchronous on
// Linux for files, pipes and terminals, so nothing is lost.)
import { main } from '../dist/src/cli/main.js';

process.exit(await main(process.argv.slice(2)));
