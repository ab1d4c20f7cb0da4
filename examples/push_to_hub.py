"""Push a trained OPTICAL model folder, with its model card, to the Hugging Face Hub.

The folder is what training saved (``trainer.save_model(...)`` or ``model.save_pretrained(...)``), README.md included.
The card's usage snippet gets the repository id, and evaluation results given with ``--eval-results`` go into the
card's ``model-index`` metadata, which the Hub shows as evaluation results.

    python examples/push_to_hub.py runs/demo/model --repo-id my-org/optical-chichewa --private
    python examples/push_to_hub.py runs/demo/model --repo-id my-org/optical-chichewa --create-pr \\
        --eval-results runs/demo/eval_results.json

``--eval-results`` reads a JSON object (or a list of them) such as::

    {"dataset_name": "CLIRMatrix en-ny", "dataset_type": "my-org/clir-en-ny", "dataset_split": "test",
     "metrics": {"ndcg@10": 0.41, "mrr@10": 0.37}}

The token comes from ``--token``, else ``HF_TOKEN``, else the login saved by ``hf auth login``. If the upload fails,
the folder is left as it is and the command says how to retry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from optical_st.hub import HubPushError, eval_results_from_metrics, push_folder_to_hub


def load_eval_results(path: Path) -> list:
    entries = json.loads(path.read_text(encoding="utf8"))
    results = []
    for entry in entries if isinstance(entries, list) else [entries]:
        metrics = entry.pop("metrics")
        results += eval_results_from_metrics(metrics, **entry)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("model_dir", type=Path, help="a saved model folder (has modules.json and README.md)")
    parser.add_argument("--repo-id", required=True, help="namespace/name on the Hub, e.g. my-org/optical-chichewa")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--eval-results", type=Path, default=None, help="JSON file with evaluation results")
    args = parser.parse_args(argv)

    eval_results = load_eval_results(args.eval_results) if args.eval_results else None
    try:
        url = push_folder_to_hub(
            args.model_dir,
            args.repo_id,
            private=args.private,
            create_pr=args.create_pr,
            token=args.token,
            eval_results=eval_results,
            commit_message=args.commit_message,
            revision=args.revision,
        )
    except HubPushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
