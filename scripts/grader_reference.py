#!/usr/bin/env python3
"""The reference packages' scores for `tests/grader_reference.rs`.

Reads JSON lines {"output": ..., "reference": ...} on stdin and writes, per line, the scores that
OpenAI's graders are defined by: sacreBLEU's sentence_bleu (/100), rouge_score's rougeL F-measure
(default tokenizer, no stemmer), rapidfuzz's fuzz.ratio (/100) and string_check's operations.
Needs sacrebleu, rouge-score and rapidfuzz (`.ci/run` installs them in .venv-ref).
"""
import json
import sys

from rapidfuzz import fuzz
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU


def main():
    bleu = BLEU(effective_order=True)  # what sacrebleu.sentence_bleu uses: 13a, exp smoothing
    rouge = rouge_scorer.RougeScorer(["rougeL"])
    for line in sys.stdin:
        pair = json.loads(line)
        output, reference = pair["output"], pair["reference"]
        scores = {
            "bleu": bleu.sentence_score(output, [reference]).score / 100.0,
            "rouge_l": rouge.score(reference, output)["rougeL"].fmeasure,
            "fuzzy_match": fuzz.ratio(output, reference) / 100.0,
            "eq": float(output == reference),
            "ne": float(output != reference),
            "like": float(reference in output),
            "ilike": float(reference.lower() in output.lower()),
        }
        sys.stdout.write(json.dumps(scores) + "\n")


if __name__ == "__main__":
    main()
