#!/usr/bin/env python3
"""PyTorch float32 attention timings for bench/gpu.ts, on the same GPU in the same device session.

Reads a JSON spec on stdin:
  {"smoke": bool, "repeat": int,
   "dense": [{"B", "N", "H", "D", "causal"}],
   "na": [{"grid": [X, Y], "heads", "dim", "kernel"}],
   "denseBwd": [{"B", "N", "H", "D", "causal"}], "naBwd": [{"grid": [X, Y(, Z)], "heads", "dim", "kernel"}]}
and prints one JSON object on stdout: {"torch", "device", "tf32", "results": [...]} or
{"unavailable": reason}. Each result echoes its case with "kind" ("sdpa" | "flex-na") and "ms"
(median over "repeat" runs after a warm-up, CUDA events) or "unavailable". The *-fwd-bwd kinds
("sdpa-fwd-bwd", "flex-na-fwd-bwd") time a forward and its backward together ("ms") and the
forward alone ("fwdMs").

Inputs are heads-last like tilewise's, [B, N, H, D], viewed as [B, H, N, D] (no copy), float32,
TF32 off: the comparison is fp32 against fp32. Without CUDA the script only runs with "smoke"
(on the CPU, to check the script itself), never for numbers.
"""
import json
import statistics
import sys
import time


def natten_mask(grid, K):
    """NATTEN semantics on every axis of `grid` (odd kernel K, dilation 1, not causal): each window
    is shifted inward at the borders. A FlexAttention mask_mod over flattened row-major tokens."""

    def coords(i):
        cs = []
        for x in reversed(grid):
            cs.append(i % x)
            i = i // x
        return list(reversed(cs))

    def mask(b, h, qi, ki):
        ok = None
        for qa, ka, L in zip(coords(qi), coords(ki), grid):
            s0 = (qa - K // 2).clamp(0, L - K)
            t = (ka >= s0) & (ka < s0 + K)
            ok = t if ok is None else ok & t
        return ok

    return mask


def allowed_pairs(mask, n, dev):
    """Pairs `mask` allows over n tokens (one head), for bench/gpu.ts to check against tilewise's count."""
    import torch

    idx = torch.arange(n, device=dev)
    return int(sum(mask(0, 0, idx[i : i + 512, None], idx[None, :]).sum().item() for i in range(0, n, 512)))


def main() -> int:
    spec = json.load(sys.stdin)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"unavailable": f"torch is not importable: {e}"}))
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not spec.get("smoke"):
        print(json.dumps({"unavailable": f"torch {torch.__version__} sees no CUDA device"}))
        return 0
    dev = "cuda" if cuda else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    repeat = int(spec.get("repeat", 5))
    out = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke only)",
        "tf32": False,
        "results": [],
    }

    def timed(fn) -> float:
        fn()  # warm-up (and compilation for flex)
        times = []
        for _ in range(repeat):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def inputs(B, N, H, D):
        # heads-last storage, [B, H, N, D] view: what a tilewise user's tensors would give
        return [torch.randn(B, N, H, D, device=dev, dtype=torch.float32).transpose(1, 2) for _ in range(3)]

    def release():
        if cuda:
            torch.cuda.empty_cache()

    for c in spec["dense"]:
        q, k, v = inputs(c["B"], c["N"], c["H"], c["D"])
        row = {**c, "kind": "sdpa"}
        try:
            with torch.no_grad():
                row["ms"] = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"]))
            try:  # which fused kernel the dispatcher picks (private API: informative only)
                row["sdpaBackend"] = str(torch._fused_sdp_choice(q, k, v, is_causal=c["causal"]))
            except Exception:
                pass
        except Exception as e:  # out of memory, no kernel for this shape: record, go on
            row["unavailable"] = f"{type(e).__name__}: {e}"[:300]
        out["results"].append(row)
        del q, k, v
        release()

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = torch.compile(flex_attention) if cuda else flex_attention
        flex_missing = None
    except Exception as e:
        flex, flex_missing = None, f"FlexAttention is not available: {type(e).__name__}: {e}"[:300]

    for c in spec["na"]:
        row = {**c, "kind": "flex-na"}
        if flex is None:
            row["unavailable"] = flex_missing
            out["results"].append(row)
            continue
        X, Y = c["grid"]
        K, H, D = c["kernel"], c["heads"], c["dim"]
        na_mask = natten_mask([X, Y], K)

        try:
            row["allowedPairs"] = allowed_pairs(na_mask, X * Y, dev)
            mask = create_block_mask(na_mask, None, None, X * Y, X * Y, device=dev)
            q, k, v = inputs(1, X * Y, H, D)
            with torch.no_grad():
                row["ms"] = timed(lambda: flex(q, k, v, block_mask=mask))
            row["maskSparsity"] = float(mask.sparsity())
            del q, k, v
        except Exception as e:
            row["unavailable"] = f"{type(e).__name__}: {e}"[:300]
        out["results"].append(row)
        release()

    # forward + backward (issue 11): SDPA and Flex with gradients, timed together
    for c in spec.get("denseBwd", []):
        row = {**c, "kind": "sdpa-fwd-bwd"}
        try:
            q, k, v = [x.detach().requires_grad_(True) for x in inputs(c["B"], c["N"], c["H"], c["D"])]
            g = torch.randn_like(q)

            def step():
                o = F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"])
                o.backward(g)

            row["ms"] = timed(step)
            with torch.no_grad():
                row["fwdMs"] = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"]))
            del q, k, v, g
        except Exception as e:
            row["unavailable"] = f"{type(e).__name__}: {e}"[:300]
        out["results"].append(row)
        release()

    for c in spec.get("naBwd", []):
        row = {**c, "kind": "flex-na-fwd-bwd"}
        if flex is None:
            row["unavailable"] = flex_missing
            out["results"].append(row)
            continue
        grid, K, H, D = c["grid"], c["kernel"], c["heads"], c["dim"]
        n = 1
        for x in grid:
            n *= x
        na_nd = natten_mask(grid, K)

        try:
            row["allowedPairs"] = allowed_pairs(na_nd, n, dev)
            mask = create_block_mask(na_nd, None, None, n, n, device=dev)
            q, k, v = [x.detach().requires_grad_(True) for x in inputs(1, n, H, D)]
            g = torch.randn_like(q)

            def step():
                o = flex(q, k, v, block_mask=mask)
                o.backward(g)

            row["ms"] = timed(step)
            with torch.no_grad():
                row["fwdMs"] = timed(lambda: flex(q, k, v, block_mask=mask))
            del q, k, v, g
        except Exception as e:
            row["unavailable"] = f"{type(e).__name__}: {e}"[:300]
        out["results"].append(row)
        release()

    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
