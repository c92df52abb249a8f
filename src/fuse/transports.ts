/** The transports by name (-o transport=NAME). */
import type { Transport, TransportName } from './transport.js';
import { libfuse3Transport } from './libfuse3/transport.js';
import { fuseNativeTransport } from './fuse-native/transport.js';

export function transportByName(name: TransportName): Transport {
  return name === 'libfuse3' ? libfuse3Transport : fuseNativeTransport;
}
