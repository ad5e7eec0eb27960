"""Embedding recipe: embed every sample of some files, folders or manifests with a saved model.

    python recipes/embed.py runs/finetune/model /tmp/emb data/sample
    accelerate launch --num_processes 4 recipes/embed.py runs/finetune/model /tmp/emb data/sample
(the same as `omnivec embed --model MODEL --output OUT --input PATH...`).
"""
import sys

from omnivec.embedding import embed_command


def main(argv: list[str]) -> None:
    model, output, *inputs = argv
    embed_command(model, inputs, output)  # shards per process, merges in input order, writes OUT.npy/.jsonl/.json


if __name__ == "__main__":
    main(sys.argv[1:])
