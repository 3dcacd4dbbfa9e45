"""A resume keeps metrics.jsonl's rows up to its checkpoint (callbacks.truncate_metrics, restore_metrics): a pass over
every row, a million of them on a long run logged at every step. A row's step is read without json where the line is a
flat record whole; a line cut short still counts as after every step."""

from __future__ import annotations

import json


def test_resuming_reads_the_rows_steps_without_parsing_each(tmp_path, monkeypatch):
    from ftctl.trainer.callbacks import restore_metrics, truncate_metrics

    rows = [{"step": 0, "event": "start", "time": 1.0, "kernels": {"liger": False}}]
    rows += [{"step": s, "loss": 1.5, "lr": 1e-5, "grad_norm": None, "time": 2.0 + s} for s in range(1, 3001)]
    rows += [{"step": 3000, "event": "eval", "eval_loss": 1.2}, {"step": 0, "event": "start", "time": 9e3}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    metrics, saved = tmp_path / "metrics.jsonl", tmp_path / "ftctl-metrics.jsonl"
    saved.write_text(text)
    metrics.write_text(text + '{"step": 3001, "loss": 1.5, "lr": 1e-5, "time": 3')  # cut short by a kill
    parsed = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: parsed.append(s) or loads(s, *a, **k))
    restore_metrics(str(metrics), str(saved))
    truncate_metrics(str(metrics), 2000)
    assert len(parsed) < 20, len(parsed)  # the start and eval records, the line cut short: not a row each
    kept = metrics.read_text().splitlines()
    assert [json.loads(line)["step"] for line in kept] == [0, *range(1, 2001), 0]  # the cut line dropped
