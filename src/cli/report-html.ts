import type { ProfileReport, ProfileRow } from './profile.js';
import type { SchedulePicture } from './schedule-picture.js';

/**
 * `tilewise profile --html`: one self-contained file (inline CSS and SVG, no script, nothing
 * fetched) with, per case, the results table, bar charts of time and useful TFLOP/s per
 * implementation and backend, and a picture of the pattern's tile schedule (full, partial and
 * skipped tiles); an overview chart compares the fused kernel across cases.
 */
const esc = (s: string): string => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

const COLORS = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#dc2626', '#0891b2'];

interface Bar {
  label: string;
  value: number;
  color: string;
}

/** A horizontal bar chart; values label their bars. */
function barChart(title: string, bars: Bar[], unit: string, fmt: (x: number) => string): string {
  const rowH = 22;
  // room for the longest label on the left and the value on the right (about 7 px a character)
  const left = Math.min(360, 16 + 7 * Math.max(...bars.map((b) => b.label.length), 4));
  const width = left + 470;
  const max = Math.max(...bars.map((b) => b.value), 1e-30);
  const h = 30 + bars.length * rowH + 10;
  const body = bars
    .map((b, i) => {
      const y = 30 + i * rowH;
      const w = Math.max(1, ((width - left - 130) * b.value) / max);
      return `<text x="${left - 8}" y="${y + 15}" text-anchor="end" class="lbl">${esc(b.label)}</text><rect class="bar" x="${left}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${b.color}"/><text x="${(left + w + 6).toFixed(1)}" y="${y + 15}" class="val">${esc(fmt(b.value))} ${esc(unit)}</text>`;
    })
    .join('');
  return `<svg class="chart" role="img" aria-label="${esc(title)}" width="${width}" height="${h}" viewBox="0 0 ${width} ${h}"><text x="8" y="18" class="ttl">${esc(title)}</text>${body}</svg>`;
}

/** The tile schedule: rows are query tiles, columns key tiles; dark = full, light = partial, blank = skipped. */
function scheduleSvg(s: SchedulePicture): string {
  const cell = Math.max(2, Math.min(10, Math.floor(380 / Math.max(s.rows, s.cols))));
  const w = s.cols * cell;
  const h = s.rows * cell;
  const fill = ['#f8fafc', '#93c5fd', '#1e3a8a'];
  const rects = s.cells.map((v, i) => (v === 0 ? '' : `<rect x="${(i % s.cols) * cell}" y="${Math.floor(i / s.cols) * cell}" width="${cell}" height="${cell}" fill="${fill[v]}"/>`)).join('');
  const sub = s.stepQ > 1 || s.stepK > 1 ? ` (one query tile in ${s.stepQ}, one key tile in ${s.stepK})` : '';
  return `<figure><svg class="sched" role="img" aria-label="tile schedule" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}"><rect width="${w}" height="${h}" fill="${fill[0]}" stroke="#cbd5e1"/>${rects}</svg>
<figcaption>Tile schedule${esc(sub)}: rows are query tiles, columns key tiles. <span class="sw" style="background:${fill[2]}"></span> full ${s.counts.full}
<span class="sw" style="background:${fill[1]}"></span> partial ${s.counts.partial} <span class="sw" style="background:${fill[0]};border:1px solid #cbd5e1"></span> skipped ${s.counts.skipped}</figcaption></figure>`;
}

const fmtMs = (x: number) => (x < 10 ? x.toFixed(2) : x.toFixed(1));
const fmtTf = (x: number) => (x >= 0.01 ? x.toFixed(3) : x.toExponential(2));

function table(reports: ProfileReport[]): string {
  const rows = reports.flatMap((r) => r.results.map((x): [string, ProfileRow] => [r.backend, x]));
  const cell = (x: ProfileRow, [b]: [string, ProfileRow]) =>
    x.ms === null
      ? `<tr><td>${esc(x.impl)}</td><td>${esc(b)}</td><td colspan="5">n/a (${esc(x.unavailable ?? '')})</td></tr>`
      : `<tr><td>${esc(x.impl)}</td><td>${esc(b)}</td><td>${fmtMs(x.ms)}${x.impl === 'reference' ? '*' : ''}</td><td>${x.usefulTflops === null ? '-' : fmtTf(x.usefulTflops)}</td><td>${x.peakBytes === null ? '-' : x.peakBytes}</td><td>${x.relErr === null ? '-' : x.relErr.toExponential(1)}</td><td>${esc(x.timing)}</td></tr>`;
  return `<table><thead><tr><th>impl</th><th>backend</th><th>median ms</th><th>useful TFLOP/s</th><th>peak extra bytes</th><th>relErr</th><th>timing</th></tr></thead><tbody>${rows.map((r) => cell(r[1], r)).join('')}</tbody></table>`;
}

export function htmlReport(perCase: ProfileReport[][], footer: string): string {
  const sections = perCase.map((reports) => {
    const timed = reports.flatMap((r, bi) => r.results.filter((x) => x.ms !== null && x.impl !== 'reference').map((x, i) => ({ r, x, color: COLORS[(bi * 3 + i) % COLORS.length]! })));
    const label = (r: ProfileReport, x: ProfileRow) => (reports.length > 1 ? `${x.impl} [${r.backend}]` : x.impl);
    const ms = barChart('median time per call (lower is better)', timed.map(({ r, x, color }) => ({ label: label(r, x), value: x.ms!, color })), 'ms', fmtMs);
    const tf = barChart('useful TFLOP/s (allowed pairs only; higher is better)', timed.filter(({ x }) => x.usefulTflops !== null).map(({ r, x, color }) => ({ label: label(r, x), value: x.usefulTflops!, color })), 'TFLOP/s', fmtTf);
    const sched = reports[0]?.schedule ? scheduleSvg(reports[0].schedule) : '';
    return `<section><h2>${esc(reports[0]!.label)}</h2><div class="row"><div>${ms}${tf}</div>${sched}</div>${table(reports)}</section>`;
  });
  const fusedBars = perCase.flatMap((reports) =>
    reports.flatMap((r, bi) => {
      const f = r.results.find((x) => x.impl === 'fused' && x.usefulTflops !== null);
      return f ? [{ label: `${r.label.split(' B=')[0]}${reports.length > 1 ? ` [${r.backend}]` : ''}`, value: f.usefulTflops!, color: COLORS[bi % COLORS.length]! }] : [];
    }),
  );
  const overview = fusedBars.length > 1 ? `<section><h2>Fused kernel across cases</h2>${barChart('useful TFLOP/s of the fused kernel', fusedBars, 'TFLOP/s', fmtTf)}</section>` : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tilewise profile</title><style>
body{font:14px system-ui,sans-serif;margin:24px;color:#0f172a;max-width:1100px}
h1{font-size:22px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin-top:8px}td,th{border:1px solid #cbd5e1;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}.chart{display:block;margin:4px 0}
.lbl,.val{font-size:12px;fill:#0f172a}.ttl{font-size:13px;font-weight:600;fill:#0f172a}
figure{margin:4px 0}figcaption{font-size:12px;max-width:380px;margin-top:6px}.sw{display:inline-block;width:10px;height:10px;margin:0 3px 0 8px}
pre{background:#f1f5f9;padding:8px;font-size:12px;white-space:pre-wrap}
</style></head><body>
<h1>tilewise profile</h1>
<p>${esc(new Date().toISOString())}: median of timed runs per implementation; useful TFLOP/s count allowed (query, key) pairs only.</p>
${overview}
${sections.join('\n')}
<pre>${esc(footer)}</pre>
</body></html>
`;
}
