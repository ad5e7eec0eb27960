"""Text samples from ACLSum (the PyPI package `aclsum`, MIT; ACL Anthology papers), offline.

- acl_summaries: a paper's abstract -> its three reference aspect summaries (challenge, approach,
  outcome) joined; summarization. ACLSum's own train/val/test splits are kept, so its test
  papers never reach training.
- acl_highlights: sentences annotated as highlighting exactly one aspect -> that aspect
  (challenge / approach / outcome); text classification, split by paper as above.
- tokenizer: a WordPiece tokenizer trained on the train split of both (`omnivec tokenizer train`).

    python data/prepare_text.py   # writes data/sample/acl_summaries/, acl_highlights/, tokenizer/
"""

import subprocess
import sys

from aclsum import ACLSum
from common import SAMPLE, write_manifest

ASPECTS = ["challenge", "approach", "outcome"]


def detokenize(sentence: str) -> str:
    """ACLSum's sentences are space-tokenised ("results , as"): glue punctuation back."""
    for p in [" ,", " .", " ;", " :", " )", " %", " ?", " !", " 's", " n't"]:
        sentence = sentence.replace(p, p[1:])
    return sentence.replace("( ", "(")


def main() -> None:
    summaries, highlights = [], []
    for split in ("train", "val", "test"):
        for doc in ACLSum(split).documents:
            abstract = " ".join(detokenize(s) for s in doc.sentences["abstract"])
            summary = " ".join(doc.summaries[a] for a in ASPECTS)
            summaries.append({"text": abstract, "summary": summary, "split": split, "paper": doc.id})
            sentences = doc.get_all_sentences()
            marks = {a: doc.get_all_highlights(a) for a in ASPECTS}
            for k, sentence in enumerate(sentences):
                aspects = [a for a in ASPECTS if marks[a][k] == 1]
                if len(aspects) == 1:
                    highlights.append(
                        {"text": detokenize(sentence), "label": aspects[0], "split": split, "paper": doc.id}
                    )
    write_manifest(SAMPLE / "acl_summaries", summaries)
    write_manifest(SAMPLE / "acl_highlights", highlights)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "omnivec",
            "tokenizer",
            "train",
            "--input",
            str(SAMPLE / "acl_summaries"),
            str(SAMPLE / "acl_highlights"),
            "--vocab-size",
            "4000",
            "--output",
            str(SAMPLE / "tokenizer"),
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
