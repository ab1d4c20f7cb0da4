"""The README's quickstart runs as written (with a tiny local teacher instead of the Hub model, and no upload)."""

from __future__ import annotations

import re
from pathlib import Path
from unittest import mock

import pytest
import torch
from sentence_transformers import SentenceTransformer

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    match = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(encoding="utf8"), re.S)
    assert match, "README has no Quickstart python block"
    return match.group(1)


@pytest.mark.slow
def test_readme_quickstart_runs(tiny_dirs, tmp_path, monkeypatch):
    code = quickstart()
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) <= 16, "the quickstart should stay about 15 lines"
    assert '"intfloat/multilingual-e5-small"' in code and 'output_dir="out"' in code
    code = code.replace('"intfloat/multilingual-e5-small"', repr(str(tiny_dirs["teacher"])))
    # two pairs make one step, all of it warm-up at the recipe's 10%: no warm-up here, so the student moves
    assert code.count("train_dataset=train)") == 1
    code = code.replace("train_dataset=train)", "train_dataset=train, warmup_steps=0)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with mock.patch.object(SentenceTransformer, "push_to_hub", autospec=True) as push:
        exec(compile(code, str(README), "exec"), namespace)
    model = namespace["model"]
    assert push.call_args.args[1] == "my-org/optical-chichewa"
    assert namespace["queries"].shape == (1, 32) and namespace["docs"].shape == (2, 32)
    # the query route was trained, the document route is still the teacher
    teacher = SentenceTransformer(str(tiny_dirs["teacher"]), device="cpu")
    docs = teacher.encode(["God is love.", "Jesus wept."], convert_to_tensor=True)
    torch.testing.assert_close(torch.as_tensor(namespace["docs"]), docs.cpu(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        torch.as_tensor(model.encode_query(["Mulungu ndi chikondi"])),
        teacher.encode(["Mulungu ndi chikondi"], convert_to_tensor=True).cpu(),
    )


def test_readme_is_a_users_outline():
    text = README.read_text(encoding="utf8")
    assert len(text.splitlines()) <= 250, "README stays a user's page; measurements and history go to docs/"
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    expected = ["Install", "Quickstart", "Train on your own bitext", "Evaluate and search", "Usage", "Results",
                "Documentation", "Development", "Citation"]  # fmt: skip
    assert headings == expected
    # every docs page is linked from the index, and every link points at a file that exists
    root = README.parent
    for page in sorted((root / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"docs/{page.name} is missing from the README's documentation index"
    for target in re.findall(r"\]\(((?:docs|results)/[^)#]+)", text):
        assert (root / target).exists(), target
