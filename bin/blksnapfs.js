#!/usr/bin/env node
// blksnapfs command-line tool (compiled TypeScript lives in dist/).
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
