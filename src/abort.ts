/**
 * Cancellation (CommonOptions.signal): a call whose AbortSignal fires rejects with the signal's
 * reason, as fetch does, and writes nothing to its outputs.
 */

/** What an aborted call rejects with: the signal's reason, else an 'AbortError' DOMException. */
export const abortReason = (signal: AbortSignal): unknown => signal.reason ?? new DOMException('This operation was aborted', 'AbortError');

/** Throws the reason of a signal that has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortReason(signal);
}
