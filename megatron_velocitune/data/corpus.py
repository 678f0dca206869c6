"""Raw text per domain to Megatron ``.bin/.idx`` files, with a real byte-level BPE tokenizer.

The low layer of ``tools/prepare_corpus.py`` and of the test and demo corpora: read documents
(a folder of text files, a glob, a single file, or JSONL with a ``text`` field), tokenize them
with a Hugging Face ``tokenizers`` BPE (trained on the corpus itself, or loaded from a
``tokenizer.json``), and write one indexed dataset per domain with megatron-core's own
``IndexedDatasetBuilder``. Each document ends with the end-of-document token, as Megatron-LM's
``preprocess_data.py --append-eod`` does.
"""

import glob
import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from megatron_velocitune.core.config import VelocituneConfigError
from megatron_velocitune.core.errors import InputError

__all__ = [
    "EOD_TOKEN",
    "DomainStats",
    "iter_documents",
    "eod_token_id",
    "load_tokenizer",
    "tokenizer_file",
    "train_tokenizer",
    "write_domain",
    "write_manifest",
]

EOD_TOKEN = "<|endoftext|>"
# Files that are certainly not text; anything else that fails to decode as UTF-8 is skipped too.
_BINARY_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".png", ".jpg", ".pyc", ".so", ".dat", ".u8"}


@dataclass
class DomainStats:
    """What one domain's indexed dataset holds.

    Attributes:
        name (str): domain name.
        prefix (str): path prefix of the ``.bin/.idx`` pair.
        documents (int): documents written.
        tokens (int): tokens written, end-of-document tokens included.
    """

    name: str
    prefix: str
    documents: int
    tokens: int


def _read_text(path: str) -> Optional[str]:
    if os.path.splitext(path)[1] in _BINARY_SUFFIXES:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (UnicodeDecodeError, OSError):
        return None
    return text if text.strip() else None


def _source_files(source: str) -> List[str]:
    if any(ch in source for ch in "*?["):
        paths = glob.glob(source, recursive=True)
    elif os.path.isdir(source):
        paths = [os.path.join(d, f) for d, _, files in os.walk(source) for f in files]
    elif os.path.isfile(source):
        paths = [source]
    else:
        raise FileNotFoundError(f"no such file, folder or glob match: {source!r}")
    # Sorted so the corpus (and every index built on it) is the same on every machine.
    return sorted(p for p in paths if os.path.isfile(p))


def iter_documents(source: str, max_bytes: Optional[int] = None) -> Iterator[str]:
    """Yield the documents of one domain source.

    Args:
        source (str): a folder (every readable UTF-8 file below it), a glob (``**`` allowed),
            a text file (one document), or a ``.jsonl`` file (one document per line's ``text``).
        max_bytes (Optional[int]): stop once this many bytes of text have been yielded.

    Returns:
        Iterator[str]: documents, in a deterministic order.
    """
    total = 0
    for path in _source_files(source):
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                texts = (json.loads(line).get("text", "") for line in f if line.strip())
                texts = [t for t in texts if t.strip()]
        else:
            text = _read_text(path)
            texts = [text] if text else []
        for text in texts:
            yield text
            total += len(text.encode("utf-8"))
            if max_bytes is not None and total >= max_bytes:
                return


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str):
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) and save it as ``tokenizer.json``.

    Args:
        texts (Iterable[str]): training text.
        vocab_size (int): vocabulary size, the end-of-document token included.
        path (str): where to save the tokenizer.

    Returns:
        tokenizers.Tokenizer: the trained tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tokenizer.save(path)
    return tokenizer


def tokenizer_file(path: str) -> str:
    """``path`` itself, or ``path/tokenizer.json`` when ``path`` is a folder."""
    return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


def _config_eos(path: str) -> Optional[str]:
    """The ``eos_token`` of the ``tokenizer_config.json`` beside a ``tokenizer.json``."""
    config = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token")
    if isinstance(eos, dict):  # older transformers: an AddedToken as a dict
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def eod_token_id(tokenizer, path: str, eod_token: Optional[str] = None) -> int:
    """The end-of-document token id each document ends with.

    Args:
        tokenizer (tokenizers.Tokenizer): the loaded tokenizer.
        path (str): where it was loaded from (its ``tokenizer_config.json`` is read from there).
        eod_token (Optional[str]): the token to use (``--tokenizer-eod-token``); default
            ``<|endoftext|>`` when the tokenizer has it (the demo's BPE, GPT-2, SmolLM2), else
            the ``eos_token`` of the ``tokenizer_config.json`` beside it (Llama's ``</s>``,
            Llama-3's ``<|end_of_text|>``), as Megatron-LM's Hugging Face tokenizer does.

    Returns:
        int: the token id.

    Raises:
        VelocituneConfigError: no such token in the vocabulary, or none can be found.
    """
    path = tokenizer_file(path)
    candidates = [eod_token] if eod_token else [EOD_TOKEN, _config_eos(path)]
    for token in candidates:
        if token is not None and tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    if eod_token:
        raise VelocituneConfigError(f"{path}: tokenizer has no end-of-document token {eod_token!r}")
    raise VelocituneConfigError(
        f"{path}: no end-of-document token: the tokenizer has no {EOD_TOKEN!r} and no "
        "tokenizer_config.json with an eos_token lies beside it (name one with "
        "--tokenizer-eod-token)"
    )


def load_tokenizer(path: str, eod_token: Optional[str] = None):
    """Load a Hugging Face ``tokenizer.json`` that has an end-of-document token.

    Args:
        path (str): a ``tokenizer.json`` or the folder holding it.
        eod_token (Optional[str]): see :func:`eod_token_id`.

    Returns:
        tokenizers.Tokenizer: the tokenizer.

    Raises:
        VelocituneConfigError: no such file, not a tokenizer, or no end-of-document token.
    """
    from tokenizers import Tokenizer

    source = tokenizer_file(path)
    if not os.path.isfile(source):
        raise VelocituneConfigError(f"--tokenizer-model {path}: no such file {source}")
    try:
        tokenizer = Tokenizer.from_file(source)
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VelocituneConfigError(
            f"--tokenizer-model {path}: {source} is not a readable Hugging Face tokenizer.json "
            f"({first[:200]})"
        ) from None
    eod_token_id(tokenizer, path, eod_token)  # fail early, naming the file
    return tokenizer


def write_domain(
    name: str,
    documents: Iterable[str],
    tokenizer,
    prefix: str,
    batch_size: int = 256,
    on_batch: Optional[Callable[[int], None]] = None,
    eod_id: Optional[int] = None,
) -> DomainStats:
    """Tokenize documents and write them as one Megatron indexed dataset.

    Args:
        name (str): domain name.
        documents (Iterable[str]): the domain's documents.
        tokenizer (tokenizers.Tokenizer): from :func:`train_tokenizer` or :func:`load_tokenizer`.
        prefix (str): output path prefix (``prefix.bin`` and ``prefix.idx`` are written).
        batch_size (int): documents tokenized per call (the Rust tokenizer runs them in parallel).
        on_batch (Optional[Callable[[int], None]]): called with the bytes of each batch
            (a progress bar's ``update``).
        eod_id (Optional[int]): the end-of-document token id (default ``<|endoftext|>``'s; see
            :func:`eod_token_id`).

    Returns:
        DomainStats: what was written.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    eod = tokenizer.token_to_id(EOD_TOKEN) if eod_id is None else eod_id
    dtype = np.uint16 if tokenizer.get_vocab_size() < 65500 else np.int32
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    stats = DomainStats(name, prefix, 0, 0)

    def flush(batch: List[str]) -> None:
        for encoding in tokenizer.encode_batch(batch):
            ids = np.array(encoding.ids + [eod], dtype=dtype)
            builder.add_document(ids, [len(ids)])
            stats.documents += 1
            stats.tokens += len(ids)
        if on_batch is not None:
            on_batch(sum(len(t.encode("utf-8")) for t in batch))

    batch: List[str] = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if stats.documents == 0:
        raise InputError(f"domain {name!r}: no documents to write")
    builder.finalize(prefix + ".idx")
    return stats


def token_proportional_weights(stats: Sequence[DomainStats]) -> List[float]:
    """The CPT default blend: each domain weighted by its share of all tokens."""
    total = sum(s.tokens for s in stats)
    return [s.tokens / total for s in stats]


def write_manifest(path: str, stats: Sequence[DomainStats], tokenizer_path: str) -> Dict:
    """Write ``corpus.json``: domains, token counts, default weights and a ``--data-path``.

    Returns:
        Dict: the manifest written.
    """
    weights = token_proportional_weights(stats)
    manifest = {
        "tokenizer": os.path.abspath(tokenizer_path),
        "domains": [asdict(s) for s in stats],
        "weights": weights,
        "data_path": " ".join(f"{w:.6f} {s.prefix}" for w, s in zip(weights, stats)),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest
