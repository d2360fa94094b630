// ipx behind a plain node:http listener on 127.0.0.1 (its CLI adds listhen's extras we don't want).
// bench/peers.py copies this file next to the throwaway node_modules that hold ipx.
// Usage: node ipx_server.mjs DIR PORT
//
// ipx as its users deploy it, defaults untouched but autoOrient (checked for issue 16, see bench/README.md "ipx"):
// on glibc without jemalloc sharp runs each render on 1 libvips thread, node's pool of 4 threads
// runs up to 4 renders at once, JPEGs are decoded at 1/2..1/8 scale where sharp allows it, and an
// embedded ICC profile is converted to sRGB (thumbor and ours keep the profile instead): half the
// CPU of a render of a Display-P3 photo such as large_12mp_bus.jpg.
import { createServer } from "node:http";
import { createIPX, createIPXNodeServer, ipxFSStorage } from "ipx";

const [dir, port] = process.argv.slice(2);
// autoOrient: upright output like the other servers' (stock ipx ignores EXIF orientation)
const ipx = createIPX({ storage: ipxFSStorage({ dir }), sharpOptions: { autoOrient: true } });
createServer(createIPXNodeServer(ipx)).listen(Number(port), "127.0.0.1");
