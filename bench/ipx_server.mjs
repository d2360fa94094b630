// ipx behind a plain node:http listener on 127.0.0.1 (its CLI adds listhen's extras we don't want).
// bench/peers.py copies this file next to the throwaway node_modules that hold ipx.
// Usage: node ipx_server.mjs DIR PORT
import { createServer } from "node:http";
import { createIPX, createIPXNodeServer, ipxFSStorage } from "ipx";

const [dir, port] = process.argv.slice(2);
// autoOrient: upright output like the other servers' (stock ipx ignores EXIF orientation)
const ipx = createIPX({ storage: ipxFSStorage({ dir }), sharpOptions: { autoOrient: true } });
createServer(createIPXNodeServer(ipx)).listen(Number(port), "127.0.0.1");
