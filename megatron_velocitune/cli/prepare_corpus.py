"""Prepare a multi-domain corpus: raw text per domain -> Megatron .bin/.idx files.

Example:
    velocitune-prepare-corpus --output-dir data/corpus --vocab-size 8192 \\
        --domain code='/usr/lib/python3.11/**/*.py' --domain man=text/man --domain kjv=text/kjv.txt

Prints each domain's documents and tokens, the token-proportional default weights, and a ready
``--data-path`` blend; writes ``corpus.json`` (the same facts) and ``tokenizer.json`` beside the
data.
"""

import argparse
import os
import shutil
import sys
from typing import List, Optional, Tuple

from megatron_velocitune.data.corpus import (
    eod_token_id,
    iter_documents,
    load_tokenizer,
    token_proportional_weights,
    tokenizer_file,
    train_tokenizer,
    write_domain,
    write_manifest,
)


def parse_domain(value: str) -> Tuple[str, str]:
    name, sep, source = value.partition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError(f"--domain {value!r}: expected NAME=SOURCE")
    return name, source


def get_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="velocitune-prepare-corpus",
        description="Tokenize raw text per domain into Megatron .bin/.idx files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--domain",
        type=parse_domain,
        action="append",
        required=True,
        metavar="NAME=SOURCE",
        help="A domain and its text: a folder, a glob (** allowed), a text file, "
        "or a .jsonl file with a 'text' field. Repeat per domain, in blend order.",
    )
    parser.add_argument("--output-dir", required=True, help="Where the .bin/.idx files go.")
    tok = parser.add_mutually_exclusive_group(required=True)
    tok.add_argument(
        "--tokenizer-model",
        help="An existing Hugging Face tokenizer.json (or the folder holding it, "
        "e.g. a converted model's checkpoint folder).",
    )
    tok.add_argument(
        "--vocab-size", type=int, help="Train a byte-level BPE of this size on the corpus itself."
    )
    parser.add_argument(
        "--tokenizer-eod-token",
        default=None,
        help="Token appended to every document (default: '<|endoftext|>' when "
        "the tokenizer has it, else its tokenizer_config.json's eos_token).",
    )
    parser.add_argument(
        "--max-bytes-per-domain",
        type=int,
        default=None,
        help="Cap each domain's text (bytes); default: all of it.",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_args(argv)
    from tqdm import tqdm

    names = [n for n, _ in args.domain]
    if len(set(names)) != len(names):
        print(f"error: --domain: repeated domain names {names}", file=sys.stderr)
        return 2
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        print(f"error: --output-dir {args.output_dir}: is a file, not a folder", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as e:
        print(f"error: --output-dir {args.output_dir}: cannot create it ({e})", file=sys.stderr)
        return 2
    try:
        texts = {n: list(iter_documents(s, args.max_bytes_per_domain)) for n, s in args.domain}
    except FileNotFoundError as e:
        print(f"error: --domain: {e}", file=sys.stderr)
        return 2
    for name, docs in texts.items():
        if not docs:
            print(f"error: --domain {name}: no readable text found", file=sys.stderr)
            return 2
    tokenizer_path = os.path.join(args.output_dir, "tokenizer.json")
    if args.tokenizer_model:
        try:
            tokenizer = load_tokenizer(args.tokenizer_model, args.tokenizer_eod_token)
            eod = eod_token_id(tokenizer, args.tokenizer_model, args.tokenizer_eod_token)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions
            print(f"error: --tokenizer-model: {e}", file=sys.stderr)
            return 2
        source = tokenizer_file(args.tokenizer_model)
        if os.path.abspath(source) != os.path.abspath(tokenizer_path):
            tokenizer.save(tokenizer_path)
            # The model's tokenizer_config.json (eos token, chat template) travels with it.
            config = os.path.join(os.path.dirname(os.path.abspath(source)), "tokenizer_config.json")
            if os.path.isfile(config):
                shutil.copyfile(config, os.path.join(args.output_dir, "tokenizer_config.json"))
    else:
        print(f"training a {args.vocab_size}-token byte-level BPE on the corpus ...")
        tokenizer = train_tokenizer(
            (d for docs in texts.values() for d in docs), args.vocab_size, tokenizer_path
        )
        eod = eod_token_id(tokenizer, tokenizer_path, args.tokenizer_eod_token)
    stats = []
    for name, docs in texts.items():
        total = sum(len(d.encode("utf-8")) for d in docs)
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stdout) as bar:
            prefix = os.path.join(args.output_dir, name)
            stats.append(
                write_domain(name, docs, tokenizer, prefix, on_batch=bar.update, eod_id=eod)
            )
    manifest = write_manifest(os.path.join(args.output_dir, "corpus.json"), stats, tokenizer_path)
    weights = token_proportional_weights(stats)
    print(f"\n{'domain':<12}{'documents':>12}{'tokens':>14}{'weight':>10}")
    for s, w in zip(stats, weights):
        print(f"{s.name:<12}{s.documents:>12,}{s.tokens:>14,}{w:>10.4f}")
    print(
        f"{'total':<12}{sum(s.documents for s in stats):>12,}"
        f"{sum(s.tokens for s in stats):>14,}{1:>10.4f}"
    )
    print(f"\ntokenizer: {tokenizer_path} (vocab {tokenizer.get_vocab_size()})")
    print(f"--data-path {manifest['data_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
