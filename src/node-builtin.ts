/**
 * A Node builtin, loaded without a specifier a browser bundler would try to resolve: through
 * `process.getBuiltinModule` where Node has it (>= 20.16), else a dynamic import of a computed
 * name, which bundlers leave alone (Vite and webpack are told so in the comments). Only ever
 * called on Node's side of a branch.
 */
export async function nodeBuiltin<T>(name: string): Promise<T> {
  const spec = `node:${name}`;
  const get = typeof process !== 'undefined' ? (process as { getBuiltinModule?: (id: string) => unknown }).getBuiltinModule : undefined;
  if (get) return get(spec) as T;
  return (await import(/* @vite-ignore */ /* webpackIgnore: true */ spec)) as T;
}
