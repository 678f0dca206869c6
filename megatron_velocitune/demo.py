"""A short CPU run of the update rules (``make demo``).

Each domain's held-out loss follows a Chinchilla data term in the tokens it has received,
``L_i(D_i) = E_i + B_i / D_i ** beta_i``; every ``m`` steps each policy reweights from the losses
it sees. This is a simulation of the loss side only (no model): it shows how the rules move the
blend and where each domain ends, in well under a second.
"""

import argparse
from typing import Dict

import numpy as np

from megatron_velocitune.policy import POLICIES, update_weights

# Five domains in the paper's Reasoning setting order, with token-proportional starting weights.
DOMAINS = ["arxiv", "owm", "stack", "code", "web"]
START = np.array([0.50, 0.26, 0.19, 0.03, 0.02])
E = np.array([1.60, 1.30, 0.90, 0.85, 2.00])
B = np.array([3.00, 4.00, 5.00, 3.50, 1.50])
BETA = np.array([0.30, 0.32, 0.35, 0.30, 0.25])
BASE_TOKENS = 1e6  # tokens of each domain the base model has effectively seen


def simulate(policy: str, steps: int, m: int, tokens_per_step: float) -> Dict[str, np.ndarray]:
    """Run one policy; return its weight trajectory and final losses."""
    loss = lambda seen: E + B / (BASE_TOKENS + seen) ** BETA  # noqa: E731
    budget = steps * tokens_per_step
    initial = loss(np.zeros(5))
    target = loss(START * budget)  # what the static blend would reach: the proxy-run target
    target = np.minimum(target, initial - 1e-3)
    w, seen, history = START.copy(), np.zeros(5), [START.copy()]
    for step in range(1, steps + 1):
        seen += w * tokens_per_step
        if step % m == 0:
            w = update_weights(policy, w, loss(seen), initial, target, 1e-3)
            history.append(w.copy())
    return {"weights": np.array(history), "initial": initial, "final": loss(seen)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--update-interval", type=int, default=150)
    parser.add_argument("--tokens-per-step", type=float, default=4e6)
    args = parser.parse_args(argv)
    print(f"{'policy':10s} " + " ".join(f"{d:>15s}" for d in DOMAINS) + "  mean loss")
    for policy in POLICIES:
        r = simulate(policy, args.steps, args.update_interval, args.tokens_per_step)
        cells = " ".join(f"{w:6.3f} / {l:6.4f}" for w, l in zip(r["weights"][-1], r["final"]))
        print(f"{policy:10s} {cells}  {r['final'].mean():.4f}")
    print("initial    " + " ".join(f"{'':6s}   {l:6.4f}" for l in r["initial"]))
    print("(cells: final weight / final held-out loss; simulated losses, no model)")


if __name__ == "__main__":
    main()
