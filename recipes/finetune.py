"""Sequential fine-tuning recipe: `python recipes/finetune.py CONFIG [key=value ...]`
(the same as `omnivec finetune CONFIG ...`).

    python recipes/finetune.py configs/finetune/sample_sequential.yaml init=runs/pretrain-tiny/model
"""
import sys

from omnivec.config import load_recipe_config
from omnivec.finetuning import finetune
from omnivec.tasks import FinetuneConfig


def main(argv: list[str]) -> None:
    cfg = load_recipe_config(FinetuneConfig, argv[0], argv[1:])  # a bad key fails here, before any work
    finetune(cfg)  # for each stage: add its heads, train, evaluate every task so far, save; then eval.json


if __name__ == "__main__":
    main(sys.argv[1:])
