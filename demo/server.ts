/**
 * `npm run demo`: serves the live page and the built library on 127.0.0.1 (a secure context, which
 * navigator.gpu needs), cross-origin isolated (COOP/COEP), so the CPU backend runs on Web Workers.
 */
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root: this file runs from dist/demo/. */
const ROOT = normalize(join(dirname(fileURLToPath(import.meta.url)), '..', '..'));
const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.map': 'application/json' };

export async function startDemoServer(port = 8080): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const file = path === '/' ? join(ROOT, 'demo', 'index.html') : normalize(join(ROOT, path));
    const ok = file.startsWith(join(ROOT, 'dist') + sep) || file === join(ROOT, 'demo', 'index.html');
    const type = TYPES[extname(file)];
    if (!ok || !type) return void res.writeHead(404).end();
    readFile(file).then(
      (body) => res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store', 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' }).end(body),
      () => res.writeHead(404).end(),
    );
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, close: () => new Promise((r) => server.close(() => r())) };
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const { url } = await startDemoServer(Number(process.env.PORT ?? 8080));
  console.log(`tilewise demo: ${url} (Chromium needs --enable-unsafe-webgpu on Linux for the WebGPU side)`);
}
