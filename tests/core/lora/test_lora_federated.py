"""LoRA in a federated run on an in-process grid: base untouched, adapter exported and merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fish_fl.checkpoint import apply_sparse_delta
from fish_fl.methods import method_for
from fish_fl.preflight import footprint
from strategies.server_app import run_server
from tests.flower_harness import InProcessGrid


@pytest.mark.slow
def test_lora_preset_shortened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rounds of the lora preset on the real MiniLM; the delta, the adapter folder, apply."""
    from peft import PeftModel

    from sims.commands.run import load_preset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_preset(
        "sst2-minilm-lora",
        [
            "rounds=2",
            "local-steps=2",
            "batch-size=8",
            "train-examples=400",
            "fisher-samples=32",
            "eval-examples=64",
            "progress=false",
            f"out-dir={tmp_path}",
        ],
    )
    shape = footprint(config)
    assert shape is not None
    # FFA-LoRA on query and value, rank matched to 0.5%: 6 blocks x 2 x 384 r, plus the head.
    assert shape.k == 6 * 2 * 384 * 24 + 770 == 111_362
    assert shape.total == 22_713_986
    assert "rank 24" in shape.lines()[1]

    run_dir = tmp_path / "run"
    summary = run_server(InProcessGrid(2), config, run_dir)
    assert summary["k"] == shape.k
    assert summary["full_model_bytes"] == 4 * 22_713_986
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["replies"] == 2

    # The delta is against the wrapped base: only B and the head changed, never A or the base.
    method = method_for(config)
    base = method.export_base()
    trained = apply_sparse_delta(method.export_base(), run_dir / "delta.safetensors")
    before, after = base.state_dict(), trained.state_dict()
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert changed and all(".lora_B." in n or ".classifier." in n for n in changed), changed
    assert summary["delta"]["changed"] <= shape.k

    # The run's adapter folder loads in peft onto the base and gives the federated logits.
    from fish_fl.task import build_base_model

    loaded = PeftModel.from_pretrained(build_base_model(config), str(run_dir / "adapter"))
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    trained.eval()
    loaded.eval()
    with torch.no_grad():
        want = trained(**batch).logits
        torch.testing.assert_close(loaded(**batch).logits, want, rtol=0, atol=1e-6)
        merged = method.deployable(trained)
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-5, atol=1e-5)
