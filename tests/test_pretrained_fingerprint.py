"""Each benchmark row names the pretrained model it fine-tuned; a store never mixes two (scaleup.pretrain.fingerprint)."""

import json

import pytest
import torch

from scaleup import bench_config as bc
from scaleup import compare as cp
from scaleup import pretrain as pt
from scaleup import results as res
from scaleup.method_mask import L1Settings
from scaleup.report import report_markdown


def micro_config():
    return bc.BenchConfig(preset="micro", world=bc.MICRO_WORLD, steps=6, warmup=1, seeds=1, pretrain_steps=200,
                          densities=(), lrs_full=(1e-3,), lrs_sparse=(3e-2,), lrs_lora=(3e-2,), l1=L1Settings(lam=1e-4),
                          score_batches=2)


def test_the_fingerprint_follows_every_bit_of_the_weights() -> None:
    model = torch.nn.Linear(4, 3)
    first = pt.fingerprint(model)
    assert first == pt.fingerprint(model) and len(first) == 16
    with torch.no_grad():
        model.weight[1, 2] = torch.nextafter(model.weight[1, 2], torch.tensor(2.0))  # one ulp
    assert pt.fingerprint(model) != first


def test_a_store_refuses_rows_from_another_pretrained_model_and_warns_on_unrecorded_ones(tmp_path) -> None:
    rows = {"a": {"method": "full", "pretrained": "aaaa"}, "b": {"method": "lora", "pretrained": "aaaa"}}
    res.check_one_checkpoint(rows, "aaaa", tmp_path)  # the same model: nothing to say
    with pytest.raises(ValueError, match=r"holds rows fine-tuned from another pretrained model \(fingerprint aaaa; "
                                         r"this run's is bbbb\)"):
        res.check_one_checkpoint(rows, "bbbb", tmp_path)
    with pytest.warns(UserWarning, match="rows of spiel record no pretrained model"):
        res.check_one_checkpoint({**rows, "c": {"method": "spiel"}}, "aaaa", tmp_path)
    assert res.checkpoints({**rows, "c": {"method": "spiel"}}) == {"aaaa": ["full", "lora"],
                                                                   res.NOT_RECORDED: ["spiel"]}


def test_rows_record_the_model_a_resumed_run_must_match_and_the_report_names_a_mix(tmp_path, cache) -> None:
    cfg = micro_config()
    assert cp.run(cfg, tmp_path, ["full", "random"], cache_dir=cache, progress=False) == 2
    model = pt.pretrained(cfg.pretrain, cache_dir=cache, progress=False)
    stored = (tmp_path / "results.jsonl").read_text().splitlines()
    assert {json.loads(line)["pretrained"] for line in stored} == {pt.fingerprint(model)}
    assert "pretrained models" not in report_markdown(tmp_path)
    first = json.loads(stored[0])
    (tmp_path / "results.jsonl").write_text("\n".join([json.dumps(dict(first, pretrained="0123456789abcdef")),
                                                       *stored[1:]]) + "\n")
    assert "**Rows from 2 pretrained models**" in report_markdown(tmp_path)
    assert f"- 0123456789abcdef: {first['method']}" in report_markdown(tmp_path)
    with pytest.raises(ValueError, match="another pretrained model .*0123456789abcdef"):
        cp.run(cfg, tmp_path, ["full", "random", "magnitude"], cache_dir=cache, progress=False)
