#!/usr/bin/env node
// mount(8) external helper: mount.blksnapfs ORIGIN MOUNTPOINT [-sfnv] [-o OPTIONS]
// Exits explicitly: see bin/blksnapfs.js.
import { mountHelper } from '../dist/src/cli/mount-helper.js';

process.exit(await mountHelper(process.argv.slice(2)));
