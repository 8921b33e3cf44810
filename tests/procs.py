"""Child processes for the tests: the `janus` CLI, torchrun, and the one hang guard they share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# A guard against a hung child only, never a performance bound: generous enough for two copies
# of the suite on a loaded 2-core machine.
HANG_S = 900
# "1" would make torchrun pick a free port, release it and have the workers bind it again (a race
# with any other process); unset, the workers share the rendezvous store bound to port 0.
UNSHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def torchrun(*janus_args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`janus <janus_args>` as `nproc` torchrun processes (gloo on CPU), output captured.

    --standalone: a local rendezvous on port 0, so two suites at once never meet on a port.
    """
    drop = ("MASTER_ADDR", "MASTER_PORT", UNSHARED_STORE)
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return subprocess.run(
        [*cmd, str(REPO / "cli.py"), *janus_args], capture_output=True, text=True, timeout=HANG_S, env=env
    )


def mismatched_share(a: dict, b: dict, lr: float) -> float:
    """The share of weights that two runs of the same steps at peak rate `lr` end more than lr / 10 apart.

    Two processes sum the same gradients as one in another order, so their gradients differ by
    rounding. AdamW's first step is sign(g) x lr for every weight, so a weight whose gradient is
    at rounding level (its sign is noise) can end up to 2 lr apart, while every other weight
    differs by rounding (~1e-6 lr): a max-abs bound can only sit at lr's own scale. Such weights
    are rare (measured: under 1e-6 of them); a real mismatch (an update lost, doubled or not
    synchronised, a sample seen twice) moves most weights by ~lr.
    """
    far = sum(int(((a[k] - b[k]).abs() > lr / 10).sum()) for k in a)
    return far / sum(v.numel() for v in a.values())
