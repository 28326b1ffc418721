import { TilewiseError } from '../errors.js';

/**
 * Typed uniforms (style.md 7): a layout is declared once as `{ name: 'u32' | 'i32' | 'f32' }`; the
 * WGSL struct and the packed bytes both come from that declaration, so the two cannot drift.
 * Scalars only: each takes 4 bytes in declaration order; the struct is padded to 16 bytes.
 */
export type ScalarType = 'u32' | 'i32' | 'f32';
export type UniformDecl = Readonly<Record<string, ScalarType>>;
export type UniformValues<T extends UniformDecl> = { readonly [K in keyof T]: number };

export interface UniformLayout<T extends UniformDecl> {
  readonly decl: T;
  /** Padded byte size of the struct. */
  readonly size: number;
  /** `struct <name> { ... }` in WGSL. */
  wgsl(name: string): string;
  pack(values: UniformValues<T>): ArrayBuffer;
}

export function uniformLayout<T extends UniformDecl>(decl: T): UniformLayout<T> {
  const names = Object.keys(decl);
  const size = Math.max(16, Math.ceil((names.length * 4) / 16) * 16);
  return {
    decl,
    size,
    wgsl: (name) => `struct ${name} {\n${names.map((n) => `  ${n}: ${decl[n]},`).join('\n')}\n}`,
    pack(values) {
      const buf = new ArrayBuffer(size);
      const dv = new DataView(buf);
      names.forEach((n, i) => {
        const x = values[n as keyof T];
        const t = decl[n]!;
        if (typeof x !== 'number' || Number.isNaN(x)) throw new TilewiseError(`uniform ${n}`, 'must be a number', String(x));
        if (t === 'f32') {
          dv.setFloat32(i * 4, x, true);
          return;
        }
        const ok = Number.isInteger(x) && (t === 'u32' ? x >= 0 && x <= 0xffffffff : x >= -0x80000000 && x <= 0x7fffffff);
        if (!ok) throw new TilewiseError(`uniform ${n}`, `must fit ${t}`, String(x));
        if (t === 'u32') dv.setUint32(i * 4, x, true);
        else dv.setInt32(i * 4, x, true);
      });
      return buf;
    },
  };
}
