/**
 * The compatibility transport (-o transport=fuse-native) runs the core suites too:
 * mounting, point in time, lifetimes, events and writable images, through the same seam. ES modules
 * run in import order, so the first import switches the transport for the rest.
 */
import './helpers/use-fuse-native.js';
import './mount.test.js';
import './point-in-time.test.js';
import './lifetimes.test.js';
import './events.test.js';
import './writable-image.test.js';
