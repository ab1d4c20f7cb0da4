"""Why the paper's OT loss does not help a multilingual student, measured: the costs, the plans, the token norms.

Takes a batch of Chichewa–English training verses, runs multilingual-e5-small on both sides (the student starts as a
copy of the teacher, so this is the first training step), and prints:

* the cosine costs between the tokens that carry mass (content tokens; prompt and special tokens excluded), their
  spread, and how much of each token is the direction all tokens share (cosine with the mean token);
* token norms on both sides (the cosine cost leaves them free; mean pooling weighs tokens by them);
* for each ``reg`` and the exact plan, with and without centring (``OTConfig(center=...)``): Sinkhorn
  iterations, the plan's entropy relative to the independent coupling (1 = uniform), the mass on each student token's
  best match (1 = a one-to-one matching) and ``<P, C>``.

    python benchmarks/ot_plan_diagnostics.py [--pairs 32] [--language nya]

The numbers quoted in docs/ot_multilingual.md come from this script.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from optical_st import build_optical_model, column_prompts
from optical_st import transport as ot
from optical_st.data import load_bible_bitext, load_multilingual_e5
from optical_st.losses import OTDistillationLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--language", default="nya")
    parser.add_argument("--regs", type=float, nargs="+", default=[0.1, 0.05, 0.02, 0.01])
    args = parser.parse_args()

    data = load_bible_bitext(language=args.language, max_pairs={"train": args.pairs})["train"]
    english, lrl = data.column_names
    model = build_optical_model(load_multilingual_e5(device="cpu"))
    loss = OTDistillationLoss(model)
    prompts = column_prompts(model, data)
    with torch.no_grad():
        s_in = model.preprocess(data[lrl], prompt=prompts.get(lrl), task="query")
        t_in = model.preprocess(data[english], prompt=prompts.get(english), task="document")
        s_out, t_out = model(dict(s_in, task="query")), model(dict(t_in, task="document"))
    s_tok, t_tok = s_out["token_embeddings"], t_out["token_embeddings"]
    a = ot.token_marginals(s_in["attention_mask"], loss._exclude_mask(s_in, loss._student))
    b = ot.token_marginals(t_in["attention_mask"], loss._exclude_mask(t_in, loss._teacher))

    mean = (t_tok * b.unsqueeze(-1)).sum((0, 1)) / b.sum()
    s_real, t_real = s_tok[a > 0], t_tok[b > 0]
    print(f"{args.pairs} pairs ({args.language}), multilingual-e5-small on both sides (student = copy of teacher)\n")
    print("| tokens | norm mean ± std | cosine with the mean teacher token |\n|---|---|---|")
    for name, tokens in (("student (LRL)", s_real), ("teacher (English)", t_real)):
        cos = F.cosine_similarity(tokens, mean[None], dim=-1)
        print(f"| {name} | {tokens.norm(dim=-1).mean():.2f} ± {tokens.norm(dim=-1).std():.2f} | {cos.mean():.3f} |")

    print("\n| cost | centred | min | mean | max | std |\n|---|---|---|---|---|---|")
    costs = {}
    for centred in (False, True):
        shift = mean if centred else torch.zeros_like(mean)
        cost = ot.cosine_cost(s_tok - shift, t_tok - shift)
        costs[centred] = cost
        st = ot.cost_statistics(cost, a, b)
        print(
            f"| cosine | {'yes' if centred else 'no'} | {st['cost_min']:.3f} | {st['cost_mean']:.3f} | "
            f"{st['cost_max']:.3f} | {st['cost_std']:.3f} |"
        )

    print(
        "\n| plan | centred | iterations | entropy / independent | mass on best match | <P, C> |\n|---|---|---|---|---|---|"
    )
    for centred, cost in costs.items():
        for reg in args.regs:
            plan, log = ot.sinkhorn_log(cost, a, b, reg=reg, max_iter=5000, tol=1e-6, return_log=True)
            st = ot.plan_statistics(plan, a, b)
            value = float((plan * cost).sum((1, 2)).mean())
            print(
                f"| Sinkhorn reg={reg:g} | {'yes' if centred else 'no'} | {log.n_iter} | {st['entropy_ratio']:.3f} | "
                f"{st['argmax_mass']:.3f} | {value:.4f} |"
            )
        plan = ot.emd(cost, a, b)
        st = ot.plan_statistics(plan, a, b)
        value = float((plan * cost).sum((1, 2)).mean())
        print(
            f"| exact (EMD) | {'yes' if centred else 'no'} | – | {st['entropy_ratio']:.3f} | "
            f"{st['argmax_mass']:.3f} | {value:.4f} |"
        )


if __name__ == "__main__":
    main()
