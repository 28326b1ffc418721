/** Every rejected input throws this: `arg` names the argument, `rule` the rule it broke. */
export class TilewiseError extends Error {
  override readonly name = 'TilewiseError';
  constructor(
    readonly arg: string,
    readonly rule: string,
    detail?: string,
  ) {
    super(`${arg}: ${rule}${detail ? ` (${detail})` : ''}`);
  }
}

export function check(cond: unknown, arg: string, rule: string, detail?: string): asserts cond {
  if (!cond) throw new TilewiseError(arg, rule, detail);
}

export function checkPositiveInt(x: unknown, arg: string): asserts x is number {
  check(typeof x === 'number' && Number.isInteger(x) && x > 0, arg, 'must be a positive integer', `got ${String(x)}`);
}
