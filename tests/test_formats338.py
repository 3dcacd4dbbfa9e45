"""Tool-call arguments Arrow stored as one struct type (a `datasets` Dataset's Parquet) lose the nulls Arrow gave them
in conversational prompt-completion rows too: only messages/conversations rows were cleaned, so a prompt-completion
row's call trained '{"city": "Paris", "query": null, "limit": null}'."""

from __future__ import annotations


def test_prompt_completion_rows_calls_lose_arrows_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftctl.trainer.formats import load_rows

    def row(name: str, args: dict) -> dict:
        call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": args}}
        return {
            "prompt": [{"role": "user", "content": "Hi"}],
            "completion": [{"role": "assistant", "content": "", "tool_calls": [call]}],
        }

    table = pa.Table.from_pylist([row("get_weather", {"city": "Paris"}), row("search", {"query": "x", "limit": 3})])
    pq.write_table(table, tmp_path / "t.parquet")  # as datasets' to_parquet writes them
    first, second = load_rows(str(tmp_path / "t.parquet"))[1][:2]
    assert not first.problems, first.problems
    assert first.messages[-1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert second.messages[-1]["tool_calls"][0]["function"]["arguments"] == {"query": "x", "limit": 3}
