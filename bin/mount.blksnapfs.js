#!/usr/bin/env node
// mount(8) external helper: mount.blksnapfs ORIGIN MOUNTPOINT [-sfnv] [-o OPTIONS]
import { mountHelper } from '../dist/src/cli/mount-helper.js';

process.exitCode = await mountHelper(process.argv.slice(2));
