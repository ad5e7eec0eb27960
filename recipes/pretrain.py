"""Masked pretraining recipe: `python recipes/pretrain.py CONFIG [key=value ...]`
(the same as `omnivec pretrain CONFIG ...`).

    python recipes/pretrain.py configs/pretrain/tiny.yaml max_steps=200 output_dir=runs/pretrain-tiny
    accelerate launch --num_processes 8 recipes/pretrain.py configs/pretrain/base.yaml
"""
import sys

from omnivec.config import load_recipe_config
from omnivec.pretraining import PretrainConfig, pretrain


def main(argv: list[str]) -> None:
    cfg = load_recipe_config(PretrainConfig, argv[0], argv[1:])  # a bad key fails here, before any work
    pretrain(cfg)  # build the model and decoders, load the data, train, checkpoint, plot, summarise


if __name__ == "__main__":
    main(sys.argv[1:])
