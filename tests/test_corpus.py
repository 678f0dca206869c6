"""The corpus layer writes real .bin/.idx files that megatron-core's IndexedDataset reads back."""

import json

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_velocitune.data.corpus import (
    DomainStats,
    iter_documents,
    load_tokenizer,
    write_domain,
    write_manifest,
)


def test_corpus_round_trips_through_megatron(corpus):
    tok = load_tokenizer(corpus.tokenizer_path)
    for _name, prefix, n_tokens in zip(corpus.names, corpus.prefixes, corpus.tokens):
        ds = IndexedDataset(prefix)
        assert len(ds) > 5
        assert int(ds.sequence_lengths.sum()) == n_tokens > 20_000
        first = ds[0]
        assert first[-1] == corpus.eod_id and corpus.eod_id not in first[:-1]
        assert len(tok.decode(first[:-1].tolist())) > 0
    assert corpus.vocab_size == 1024


def test_jsonl_documents_and_manifest(tmp_path, corpus):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["alpha beta", "", "gamma"]) + "\n")
    docs = list(iter_documents(str(src)))
    assert docs == ["alpha beta", "gamma"]
    tok = load_tokenizer(corpus.tokenizer_path)
    stats = write_domain("toy", docs, tok, str(tmp_path / "toy"))
    ds = IndexedDataset(stats.prefix)
    assert len(ds) == 2 and stats.tokens == int(ds.sequence_lengths.sum())
    np.testing.assert_array_equal(ds[0][:-1], tok.encode("alpha beta").ids)
    other = DomainStats("other", "/x/other", 1, stats.tokens * 3)
    manifest = write_manifest(str(tmp_path / "corpus.json"), [stats, other], corpus.tokenizer_path)
    assert manifest["weights"] == [0.25, 0.75]
    assert manifest["data_path"].split() == ["0.250000", stats.prefix, "0.750000", "/x/other"]


def test_prepare_corpus_tool(tmp_path, corpus, capsys):
    from megatron_velocitune.cli import prepare_corpus as tool

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("The quick brown fox. " * 50)
    (tmp_path / "b.jsonl").write_text('{"text": "def f(x):\\n    return x"}\n' * 30)
    out = tmp_path / "out"
    rc = tool.main(
        [
            "--output-dir",
            str(out),
            "--tokenizer-model",
            corpus.tokenizer_path,
            "--domain",
            f"prose={tmp_path / 'a'}",
            "--domain",
            f"code={tmp_path / 'b.jsonl'}",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "--data-path" in printed and (out / "prose.idx").exists()
    manifest = json.load(open(out / "corpus.json"))
    assert [d["documents"] for d in manifest["domains"]] == [1, 30]
    assert abs(sum(manifest["weights"]) - 1) < 1e-12
    assert (
        tool.main(
            [
                "--output-dir",
                str(out),
                "--vocab-size",
                "300",
                "--domain",
                f"x={tmp_path / 'missing'}",
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
