/**
 * What the browser tests and the Chromium bench share: the Chromium binary and its flags, and a
 * static server on 127.0.0.1 (a secure context, which navigator.gpu requires) for the browser
 * tests and benches: files under `root`, '/' answered with a bare page (or root's index.html),
 * and every path also under /isolated/, served there with COOP/COEP so that page is cross-origin
 * isolated and may share memory with Web Workers (or COOP/COEP everywhere). Requests are logged.
 */
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize, sep } from 'node:path';

export interface Served {
  origin: string;
  log: { path: string; status: number }[];
  close(): Promise<void>;
}

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.map': 'application/json' };
const COI = { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };

/**
 * `page`: the HTML answered at '/' (default: root's index.html); the data: icon keeps the browser
 * from asking for one. `isolateAll`: COOP/COEP on every path, for builds that load their assets
 * by absolute paths (a worker in an isolated page needs the headers on its own script too).
 */
export async function serveStatic(root: string, page?: string, isolateAll = false): Promise<Served> {
  const base = normalize(root);
  const log: Served['log'] = [];
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const prefixed = path.startsWith('/isolated/');
    const isolated = isolateAll || prefixed;
    const rel = prefixed ? path.slice('/isolated'.length) : path;
    const send = (status: number, type: string, body: string | Buffer) => {
      log.push({ path, status });
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...(isolated ? COI : {}) }).end(body);
    };
    if (rel === '/' && page !== undefined) return send(200, TYPES['.html']!, page);
    const file = normalize(join(base, rel === '/' ? 'index.html' : rel));
    const type = TYPES[extname(file)];
    if (!file.startsWith(base + sep) || !type) return send(404, 'text/plain', 'not found');
    readFile(file).then(
      (body) => send(200, type, body),
      () => send(404, 'text/plain', 'not found'),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { origin: `http://127.0.0.1:${port}`, log, close: () => new Promise((r) => server.close(() => r())) };
}

/** Debian's Chromium unless $TILEWISE_CHROMIUM names another binary. */
export const CHROMIUM = process.env.TILEWISE_CHROMIUM ?? '/usr/lib/chromium/chromium';

/**
 * Launch flags for headless Chromium here: WebGPU (behind a flag on Linux; SwiftShader serves as
 * the adapter without a GPU), no sandbox (root), no background traffic or throttling.
 */
export const CHROMIUM_ARGS: readonly string[] = [
  '--enable-unsafe-webgpu',
  '--no-sandbox',
  '--disable-gpu-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];
