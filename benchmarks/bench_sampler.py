"""The image-token sampler: fused Triton kernel vs the torch reference (and FlashInfer where
installed, and the released code's softmax + multinomial), time per call at [2 x B, V].

    python benchmarks/bench_sampler.py                 # CPU: the torch paths only (the kernel needs CUDA)
    python benchmarks/bench_sampler.py --top-k 50 --top-p 0.9

Each call reads the (2B, V) CFG logits once (bf16 on CUDA) and writes B tokens (+ B logprobs):
the fraction of HBM bandwidth is those bytes over the time per call over the GPU's peak.
"""

from __future__ import annotations

import argparse

import torch
from timing import hbm_peak_bytes_per_s, per_call

from janus_data.generators.sampling import SamplerParams, cfg_logits, counter_uniform, sample_reference


def released_code_sampler(cond, uncond, seeds, step, params, want_logprobs=False):
    """The released Janus code's order, unfused: CFG -> top-k -> softmax(logits / T) -> sorted top-p -> multinomial."""
    logits = cfg_logits(cond, uncond, params.cfg_weight)
    if params.top_k:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > params.top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1).squeeze(-1), None


def flashinfer_sampler():
    """FlashInfer's fused sampling after a torch CFG mix, or None when it is not installed."""
    try:
        from flashinfer import sampling as fi
    except Exception:  # optional: any import failure means absent
        return None

    def sample(cond, uncond, seeds, step, params, want_logprobs=False):
        logits = cfg_logits(cond, uncond, params.cfg_weight) / params.temperature
        if params.top_k or params.top_p < 1.0:
            return fi.top_k_top_p_sampling_from_logits(logits, params.top_k or logits.shape[-1], params.top_p), None
        return fi.sampling_from_logits(logits), None

    return sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--batches", default="1,16,64", help="prompts per call (each is a cond and an uncond row)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--logprobs", action="store_true", help="also return the sampled token's log-probability")
    ap.add_argument("--peak-gbs", type=float, default=None, help="HBM peak in GB/s if not an H100/H200")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    params = SamplerParams(cfg_weight=5.0, temperature=1.0, top_k=args.top_k, top_p=args.top_p)
    peak = hbm_peak_bytes_per_s(args.peak_gbs)
    samplers = {"reference": sample_reference, "released-code": released_code_sampler}
    if cuda:
        from janus_data.generators.sampling_kernel import sample_kernel

        samplers = {"kernel": sample_kernel, **samplers}
        if (fi := flashinfer_sampler()) is not None:
            samplers["flashinfer"] = fi
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, {dtype}, vocab {args.vocab}, {params}")
    if not cuda:
        print("no CUDA: the fused kernel runs only on a GPU (CI checks it bit for bit with TRITON_INTERPRET=1)")
    print(f"{'B':>4} {'sampler':<14}{'us/call':>10}{'GB/s':>9}{'%HBM':>7}{'vs reference':>14}")
    for batch in [int(b) for b in args.batches.split(",")]:
        logits = torch.randn(2 * batch, args.vocab, device=device).mul_(3).to(dtype)
        cond, uncond = logits[:batch], logits[batch:]
        seeds = torch.arange(batch, device=device, dtype=torch.int64)
        # Sanity: the kernel draws exactly the reference's tokens for the same numbers.
        if "kernel" in samplers:
            ref = sample_reference(cond, uncond, seeds, 3, params)[0]
            assert torch.equal(samplers["kernel"](cond, uncond, seeds, 3, params)[0], ref)
        counter_uniform(seeds, 0, 8)  # warm the hash path
        nbytes = logits.numel() * logits.element_size() + batch * (8 + (4 if args.logprobs else 0))
        call = (cond, uncond, seeds, 7, params, args.logprobs)
        times = {name: per_call(lambda fn=fn, call=call: fn(*call), args.calls) for name, fn in samplers.items()}
        for name, seconds in times.items():
            gbs = nbytes / seconds / 1e9
            frac = f"{100 * nbytes / seconds / peak:6.1f}" if peak else "     -"
            print(
                f"{batch:>4} {name:<14}{seconds * 1e6:>10.1f}{gbs:>9.1f}{frac:>7}{times['reference'] / seconds:>13.2f}x"
            )


if __name__ == "__main__":
    main()
