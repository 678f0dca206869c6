"""Shared fixtures: a small real corpus (three domains of real text on every Debian/Python
machine), tokenized with a byte-level BPE trained on it and written as Megatron .bin/.idx files.
"""

import ast
import contextlib
import glob
import os
import sysconfig
from dataclasses import dataclass
from typing import Iterator, List

import pytest

from megatron_velocitune.data.corpus import EOD_TOKEN, iter_documents, train_tokenizer, write_domain

STDLIB = sysconfig.get_paths()["stdlib"]
DOMAIN_BYTES = 300_000


def stdlib_docstrings() -> Iterator[str]:
    """Technical prose: the docstrings of the standard library's top-level modules."""
    for path in sorted(glob.glob(os.path.join(STDLIB, "*.py"))):
        try:
            tree = ast.parse(open(path, encoding="utf-8").read())
        except (SyntaxError, UnicodeDecodeError):
            continue
        docs = [
            ast.get_docstring(n)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
        ]
        text = "\n\n".join(d for d in docs if d)
        if text:
            yield text


def capped(docs: Iterator[str], max_bytes: int) -> List[str]:
    out, total = [], 0
    for d in docs:
        out.append(d)
        total += len(d.encode())
        if total >= max_bytes:
            break
    return out


@dataclass
class Corpus:
    root: str
    names: List[str]
    prefixes: List[str]
    tokens: List[int]
    vocab_size: int
    eod_id: int
    tokenizer_path: str


def build_corpus(root: str, vocab_size: int = 1024) -> Corpus:
    sources = {
        "code": capped(iter_documents(os.path.join(STDLIB, "*.py")), DOMAIN_BYTES),
        "docs": capped(stdlib_docstrings(), DOMAIN_BYTES),
        "legal": capped(iter_documents("/usr/share/doc/**/copyright"), DOMAIN_BYTES),
    }
    for name, docs in sources.items():
        assert docs, f"no text for test domain {name!r} on this machine"
    tok_path = os.path.join(root, "tokenizer.json")
    tokenizer = train_tokenizer(
        (d for docs in sources.values() for d in docs), vocab_size, tok_path
    )
    stats = [write_domain(n, docs, tokenizer, os.path.join(root, n)) for n, docs in sources.items()]
    return Corpus(
        root,
        list(sources),
        [s.prefix for s in stats],
        [s.tokens for s in stats],
        tokenizer.get_vocab_size(),
        tokenizer.token_to_id(EOD_TOKEN),
        tok_path,
    )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(str(tmp_path_factory.mktemp("corpus")))


@contextlib.contextmanager
def one_process_world():
    """A one-process gloo world with megatron-core's parallel state, torn down after."""
    from megatron_velocitune.training import ParallelConfig, destroy_parallel, initialize_parallel

    from ._multiproc import free_port

    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(
        RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    try:
        yield initialize_parallel(ParallelConfig(), seed=1234)
    finally:
        destroy_parallel()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def world():
    """A one-process gloo world with megatron-core's parallel state (torn down after)."""
    with one_process_world() as info:
        yield info
