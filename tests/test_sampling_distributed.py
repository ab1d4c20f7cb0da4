"""DynamicHardNegativeSampler under DDP: 2 CPU processes (gloo) through torchrun."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from conftest import toy_bitext
from test_distributed import SCRIPTS, launch


@pytest.mark.slow
def test_two_processes_share_the_negatives_and_stay_in_sync(tmp_path, tiny_dirs):
    results = launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPTS / "ddp_hard_negatives.py"),
            str(tmp_path),
            str(tiny_dirs["teacher"].parent),
        ],
        tmp_path,
        timeout=420,
    )
    assert [r["rank"] for r in results] == [0, 1]
    rank0, rank1 = results
    # training completed (48 rows, 4 per device, 2 devices, 2 epochs) and the replicas ended identical
    assert rank0["steps"] == rank1["steps"] == 12
    assert rank0["finite"] and rank1["finite"]
    assert rank0["digest"] == rank1["digest"], "replicas diverged"
    # identical negatives tables on both ranks: initial + refreshes at steps 2, 4, 6, 8, 10
    assert len(rank0["tables"]) == 6
    assert rank0["tables"] == rank1["tables"]
    assert len({t["digest"] for t in rank0["tables"]}) == 6  # each refresh changed something
    # each loss call got exactly the rows its dataset transform built: anchors and both negative columns aligned
    assert rank0["aligned"] and rank1["aligned"]
    # the batches are sharded: per epoch the ranks read disjoint halves that together cover every row once
    pairs = Counter(zip(toy_bitext(48)["english"], toy_bitext(48)["lrl"], strict=True))
    for epoch in (0, 1):
        seen = Counter(
            (row[0], row[1])
            for r in (rank0, rank1)
            for f in r["fetched"][6 * epoch : 6 * epoch + 6]
            for row in f["rows"]
        )
        assert seen == pairs
    # both ranks fetched position p with the same table
    served0 = {f["position"]: f["refresh"] for f in rank0["fetched"]}
    served1 = {f["position"]: f["refresh"] for f in rank1["fetched"]}
    assert {p // 2: r for p, r in served0.items()} == {p // 2: r for p, r in served1.items()}
    assert set(served0.values()) >= {0, 1, 2, 3, 4}
