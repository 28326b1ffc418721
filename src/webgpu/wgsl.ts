/// <reference types="@webgpu/types" />
import { TilewiseError } from '../errors.js';
import { ShaderStage } from './device.js';
import type { UniformDecl, UniformLayout } from './uniforms.js';

/** JSON with object keys sorted, so equal specs give equal strings whatever their key order. */
export function stableStringify(x: unknown): string {
  if (x === null || typeof x !== 'object') return JSON.stringify(x) ?? 'undefined';
  if (Array.isArray(x)) return `[${x.map(stableStringify).join(',')}]`;
  const o = x as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${stableStringify(o[k])}`)
    .join(',')}}`;
}

export type BindingKind = 'uniform' | 'read' | 'readwrite';

/**
 * One kernel family (style.md 5): its bindings, typed uniforms and a generator from a spec object
 * (compile-time constants only; runtime sizes travel in the uniforms). Binding i of the list is
 * `@binding(i)`; the generator declares them with `bindingDecls`.
 */
export interface Program<S, U extends UniformDecl> {
  readonly name: string;
  readonly uniforms: UniformLayout<U>;
  bindings(spec: S): readonly Binding[];
  workgroupSize(spec: S): number;
  generate(spec: S): string;
}

export interface Binding {
  readonly name: string;
  readonly kind: BindingKind;
  readonly type: string;
}

/** The vector width rows of `n` elements are read with: 4 when it divides them, else 1. */
export const vecWidth = (n: number): 1 | 4 => (n % 4 === 0 ? 4 : 1);

/** The WGSL type of rows read `w` elements at a time. */
export const vecType = (w: 1 | 4, elem: 'f32' | 'f16' = 'f32'): string => (w === 4 ? `vec4<${elem}>` : elem);

/**
 * f16 storage with f32 arithmetic (design.md 4): the `enable f16;` directive a kernel starts with,
 * `ld_<name>(i)` per buffer (row i widened to f32 rows of width w) and `narrow` for stores into f16.
 * With f16 off, the loads read the f32 rows as they are and stores take values unchanged.
 */
export const f16Directive = (f16: boolean): string => (f16 ? 'enable f16;\n' : '');

export function widenLoads(f16: boolean, bufs: readonly (readonly [name: string, w: 1 | 4])[]): string {
  return bufs.map(([b, w]) => `fn ld_${b}(i: u32) -> ${vecType(w)} { return ${f16 ? `${vecType(w)}(${b}[i])` : `${b}[i]`}; }`).join('\n');
}

export const narrow = (f16: boolean, w: 1 | 4, x: string): string => (f16 ? `${vecType(w, 'f16')}(${x})` : x);

/**
 * The linear index of this invocation in a 2-D grid of THREADS-wide workgroups (`run.ts threadGrid`;
 * the x extent travels in the uniform `P.groupsX`), for kernels with one thread per element or row.
 */
export const FLAT_INVOCATION = '(wid.x + wid.y * P.groupsX) * THREADS + lid';

/** Uniforms, q, k, v, out (of element type `io`) and lse (f32): the bindings every attention forward kernel starts with. */
export function attnBindings(wq: 1 | 4, wv: 1 | 4, io: 'f32' | 'f16' = 'f32'): Binding[] {
  return [
    { name: 'P', kind: 'uniform', type: 'Params' },
    { name: 'q', kind: 'read', type: `array<${vecType(wq, io)}>` },
    { name: 'k', kind: 'read', type: `array<${vecType(wq, io)}>` },
    { name: 'v', kind: 'read', type: `array<${vecType(wv, io)}>` },
    { name: 'out', kind: 'readwrite', type: `array<${vecType(wv, io)}>` },
    { name: 'lse', kind: 'readwrite', type: 'array<f32>' },
  ];
}

/**
 * The head of every generated kernel: a title with its spec, the `Params` struct of the program's
 * uniforms, its binding declarations and compile-time `u32` constants.
 */
export function prologue<S, U extends UniformDecl>(program: Program<S, U>, spec: S, consts: Readonly<Record<string, number>>): string {
  return `// tilewise ${program.name} (generated): ${JSON.stringify(spec)}
${program.uniforms.wgsl('Params')}
${bindingDecls(program.bindings(spec))}

${Object.entries(consts)
  .map(([n, x]) => `const ${n}: u32 = ${x}u;`)
  .join('\n')}`;
}

/** `var<...> name: type;` lines for a program's bindings; binding 0 is the uniform struct `Params`. */
export function bindingDecls(bs: readonly Binding[]): string {
  return bs
    .map((b, i) => {
      const space = b.kind === 'uniform' ? 'uniform' : b.kind === 'read' ? 'storage, read' : 'storage, read_write';
      return `@group(0) @binding(${i}) var<${space}> ${b.name}: ${b.type};`;
    })
    .join('\n');
}

export interface CachedPipeline {
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  readonly code: string;
}

const pipelines = new WeakMap<GPUDevice, Map<string, Promise<CachedPipeline>>>();

/** The pipeline for (program, spec), compiled once per device; the key is the spec itself, stringified. */
export function getPipeline<S, U extends UniformDecl>(device: GPUDevice, program: Program<S, U>, spec: S): Promise<CachedPipeline> {
  let m = pipelines.get(device);
  if (!m) pipelines.set(device, (m = new Map()));
  const key = `${program.name}:${stableStringify(spec)}`;
  let p = m.get(key);
  if (!p) {
    p = compile(device, program, spec);
    m.set(key, p);
    p.catch(() => m!.delete(key));
  }
  return p;
}

async function compile<S, U extends UniformDecl>(device: GPUDevice, program: Program<S, U>, spec: S): Promise<CachedPipeline> {
  const code = program.generate(spec);
  // Everything between push and pop is synchronous, so concurrent calls cannot swap scopes.
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code, label: program.name });
  const layout = device.createBindGroupLayout({
    label: program.name,
    entries: program.bindings(spec).map((b, i) => ({
      binding: i,
      visibility: ShaderStage.COMPUTE,
      buffer: { type: b.kind === 'uniform' ? 'uniform' : b.kind === 'read' ? 'read-only-storage' : 'storage' },
    })),
  });
  const pipelineP = device
    .createComputePipelineAsync({
      label: program.name,
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: 'main' },
    })
    .then(
      (p) => ({ p, failure: undefined }),
      (e: unknown) => ({ p: undefined, failure: (e as Error).message }),
    );
  const errP = device.popErrorScope();
  const [{ p: pipeline, failure }, err] = await Promise.all([pipelineP, errP]);
  if (err || !pipeline) {
    const info = await module.getCompilationInfo();
    const msgs = info.messages.map((m) => `${m.type} ${m.lineNum}:${m.linePos} ${m.message}`).join('\n');
    throw new TilewiseError('webgpu', `could not compile the ${program.name} kernel`, [err?.message, failure, msgs].filter((x) => x).join('\n'));
  }
  return { pipeline, layout, code };
}
