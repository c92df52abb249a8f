/** Imported first by a test file: its mounts use -o transport=fuse-native. */
import { setTestTransport } from './fixture.js';

setTestTransport('fuse-native');
