"""benchmarks/transformer_layer.py: argument parsing, the case sets, grouping of comm labels, the plain part end to end,
and the secure part on its smallest case."""
import argparse
import json

import pytest

from benchmarks import transformer_layer as tl


def test_case_sets_and_parsing():
    assert {s for s, _ in tl.FULL} == {16, 32, 64, 128} and {w for _, w in tl.FULL} == {64, 128, 256, 512, 768}
    assert len(tl.FULL) == 20 and set(tl.QUICK) <= set(tl.FULL)
    assert tl.parse_cases("16x64, 128x768") == [(16, 64), (128, 768)]
    for bad in ("16", "16x", "x64", "16x64x2", "16x65"):  # 65 is not divisible by its 2 heads
        with pytest.raises(argparse.ArgumentTypeError):
            tl.parse_cases(bad)
    assert [tl.heads_for(w) for w in (64, 128, 256, 512, 768)] == [2, 2, 4, 8, 12]
    with pytest.raises(SystemExit):  # the case sets exclude each other
        tl.main(["--quick", "--full"])


def test_comm_labels_are_grouped_by_their_top_op():
    by_label = {"softmax/softmax/max/level0/msb/split": {"bytes": 5}, "softmax_backward/mul/truncate": {"bytes": 1},
                "gelu/poly/truncate": {"bytes": 7}, "native_layer_norm/rsqrt": {"bytes": 11},
                "layer_norm_backward/mul": {"bytes": 2}, "matmul/truncate": {"bytes": 13}, "bmm/truncate": {"bytes": 3},
                "mul_public/truncate": {"bytes": 17}, "reveal/output": {"bytes": 19}}
    assert tl.group_bytes(by_label) == {"attention softmax": 6, "GELU": 7, "LayerNorm": 13, "matmuls": 16,
                                        "other": 36}


def test_plain_part_writes_table_and_json(tmp_path):
    out = tl.main(["--cases", "16x64", "--plain-only", "--out", str(tmp_path / "tl")])
    rows = out["rows"]
    assert [(r["seq"], r["width"], r["phase"]) for r in rows] == [(16, 64, "inference"), (16, 64, "training")]
    assert all(r["plain_s"] > 0 and r["status"] == "plain only" and "secure_s" not in r for r in rows)
    md = (tmp_path / "tl.md").read_text()
    assert "| 16 | 64 | 2 | inference |" in md and "attention softmax %" in md and "cores" in md
    saved = json.loads((tmp_path / "tl.json").read_text())
    assert saved["rows"][1]["plain_s"] == rows[1]["plain_s"] and saved["meta"]["groups"] == list(tl.GROUPS)


@pytest.mark.slow  # ~25 s: fresh parties; the table's format is tested above, the layer's values in test_ops_attention
def test_secure_smallest_case(tmp_path):
    rows = tl.main(["--cases", "16x64", "--out", str(tmp_path / "tl"), "--timeout", "300"])["rows"]
    for r in rows:
        assert r["status"] == "ok" and r["secure_s"] > 0 and r["rounds"] > 0
        assert all(b > 0 for b in r["bytes_per_party"]) and all(m > 0 for m in r["peak_rss_mib_per_party"])
        assert sum(r["groups_p0"].values()) == r["bytes_per_party"][0]
        for group in ("attention softmax", "LayerNorm", "matmuls"):
            assert r["groups_p0"][group] > 0, (group, r["by_label_p0"].keys())
    assert rows[1]["bytes_per_party"][0] > rows[0]["bytes_per_party"][0]  # a training step costs more
