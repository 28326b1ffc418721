/**
 * Token geometry of one sequence. Patterns work in "group-local" coordinates: dilation d along an
 * axis splits it into d interleaved groups (coordinate g + d * x), each an ordinary non-dilated
 * problem (design.md section 2). Patterns without dilation have a single group, the whole grid.
 */
export interface Geometry {
  readonly qShape: readonly number[];
  readonly kShape: readonly number[];
  readonly dilation: readonly number[];
}

/** A half-open box [lo, hi) in group-local coordinates. */
export interface Box {
  readonly lo: number[];
  readonly hi: number[];
}

export interface Group {
  readonly offset: readonly number[];
  readonly qLen: readonly number[];
  readonly kLen: readonly number[];
}

export const groupLength = (len: number, d: number, g: number): number => Math.ceil((len - g) / d);

export function groupsOf(geo: Geometry): Group[] {
  const rank = geo.qShape.length;
  const out: Group[] = [];
  const offset = new Array<number>(rank).fill(0);
  for (;;) {
    out.push({
      offset: [...offset],
      qLen: geo.qShape.map((l, i) => groupLength(l, geo.dilation[i]!, offset[i]!)),
      kLen: geo.kShape.map((l, i) => groupLength(l, geo.dilation[i]!, offset[i]!)),
    });
    let i = rank - 1;
    while (i >= 0 && ++offset[i]! === geo.dilation[i]!) offset[i--] = 0;
    if (i < 0) return out;
  }
}

export const boxVolume = (b: Box): number => b.lo.reduce((v, lo, i) => v * Math.max(0, b.hi[i]! - lo), 1);

/** Row-major strides of a grid. */
export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

// scratch of boxTokens and boxCoords (grown to the rank): they run once per work item of the CPU
// kernels, whose item loops allocate nothing (garbage there made the pool threads' collectors run
// beside the compute threads on every few calls)
let cursor = new Float64Array(4);
let strides = new Float64Array(4);
function scratchFor(rank: number): void {
  if (cursor.length < rank) {
    cursor = new Float64Array(rank);
    strides = new Float64Array(rank);
  }
}

/** Writes the flat (global, row-major) token index of every point of a local box, row-major. */
export function boxTokens(
  shape: readonly number[],
  dilation: readonly number[],
  group: Group,
  box: Box,
  out: Int32Array,
): number {
  const rank = shape.length;
  if (rank === 1) {
    const d = dilation[0]!;
    const g = group.offset[0]!;
    let n = 0;
    for (let x = box.lo[0]!; x < box.hi[0]!; x++) out[n++] = g + d * x;
    return n;
  }
  scratchFor(rank);
  const x = cursor;
  const st = strides;
  let acc = 1;
  for (let i = rank - 1; i >= 0; i--) {
    if (box.lo[i]! >= box.hi[i]!) return 0;
    x[i] = box.lo[i]!;
    st[i] = acc;
    acc *= shape[i]!;
  }
  let n = 0;
  for (;;) {
    let flat = 0;
    for (let i = 0; i < rank; i++) flat += (group.offset[i]! + dilation[i]! * x[i]!) * st[i]!;
    out[n++] = flat;
    let i = rank - 1;
    while (i >= 0 && ++x[i]! === box.hi[i]!) x[i] = box.lo[i--]!;
    if (i < 0) return n;
  }
}

export const prod = (t: readonly number[]): number => t.reduce((a, b) => a * b, 1);

/** Local coordinates of every point of a box, row-major, `rank` entries per point. */
export function boxCoords(box: Box, out: Int32Array): void {
  const rank = box.lo.length;
  scratchFor(rank);
  const x = cursor;
  for (let a = 0; a < rank; a++) {
    if (box.lo[a]! >= box.hi[a]!) return;
    x[a] = box.lo[a]!;
  }
  let n = 0;
  for (;;) {
    for (let a = 0; a < rank; a++) out[n++] = x[a]!;
    let a = rank - 1;
    while (a >= 0 && ++x[a]! === box.hi[a]!) x[a] = box.lo[a--]!;
    if (a < 0) return;
  }
}
