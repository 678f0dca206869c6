"""Start-up checks of the training entry: what can fail later is checked before training.

Each check raises a :class:`~megatron_velocitune.core.errors.VelocituneError` with one line; the
collective ones make every rank raise the same error, so no rank is left waiting in a collective
while another has stopped (the ``--save`` lock and folder check, shared with the Megatron-LM
adapter, are :mod:`megatron_velocitune.control.run_folder`'s).
"""

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_velocitune.core.errors import VelocituneError

__all__ = ["check_heldout"]


def check_heldout(
    valid: Optional[Sequence],
    names: List[str],
    split: str,
    per_step: int,
    eval_counts: Sequence[tuple],
    num_domains: int,
    prefixes: Optional[Sequence[str]] = None,
) -> None:
    """Every domain has a held-out set, and each evaluation fits in the smallest (collective).

    Args:
        valid (Optional[Sequence]): the held-out datasets (None on ranks without data).
        names (List[str]): domain names.
        split (str): ``--split``, for the error line.
        per_step (int): samples one evaluation micro-batch step reads (micro-batch x DP).
        eval_counts (Sequence[tuple]): ``(flag, micro-batches per domain)`` of each evaluation.
        num_domains (int): the domain count (known on every rank).
        prefixes (Optional[Sequence[str]]): the domains' data prefixes, for the error lines.

    Raises:
        VelocituneError: a domain without held-out documents, a held-out set smaller than one
            evaluation step (every evaluation would repeat its few samples: a loss with no
            spread), or an evaluation larger than a held-out set (it would repeat samples and
            run for hours).
    """
    local = [-1] * num_domains
    if valid is not None:
        local = [-2 if d is None else len(d) for d in valid]
    # The minimum over the data-holding ranks (ranks without data send a large number), so a
    # missing set (-2) wins over any size; on the device NCCL reduces.
    device = (
        torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else None
    )
    t = torch.tensor(local, dtype=torch.int64, device=device)
    t = torch.where(t == -1, torch.full_like(t, 2**62), t)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    sizes = t.tolist()
    for name, n in zip(names, sizes):
        if n == 2**62:
            continue
        if n <= 0:
            raise VelocituneError(
                f"--split {split}: domain {name!r} gets no held-out documents, and the "
                "per-domain held-out sets are needed (the policy's losses with "
                "--velocitune-loss-source eval, the validation and the final loss table): "
                "give the validation split a share, e.g. --split 98,2,0"
            )
    for i, (name, n) in enumerate(zip(names, sizes)):
        if n != 2**62 and n < per_step:
            where = f" ({prefixes[i]})" if prefixes else ""
            raise VelocituneError(
                f"--split {split}: domain {name!r}{where} holds {n} held-out sample(s), fewer "
                f"than one evaluation step reads ({per_step}: micro-batch x data-parallel): "
                "give the validation split a larger share or the domain more documents"
            )
    smallest = min((n, name) for name, n in zip(names, sizes) if n != 2**62)
    for flag, iters in eval_counts:
        if iters > max(smallest[0] // per_step, 1):
            raise VelocituneError(
                f"{flag} {iters}: {iters} x {per_step} samples (micro-batch x data-parallel) "
                f"per domain, but domain {smallest[1]!r} holds {smallest[0]} held-out samples "
                f"(--split {split}): at most {max(smallest[0] // per_step, 1)}"
            )
