"""How much of a transplant's cost the next-piece targets of ``heal`` could explain.

For the first ``--chars`` characters of each prose text: both tokenizers read it, the chunks
both end a token at are aligned (``heal/align.py``), and at every student position inside a
chunk's first teacher token the teacher's next-token mass read in student pieces
(``heal/pieces.py``) gives a probability for the student's actual next piece. Printed per
text, in bits per byte of the text:

* ``cost``: the transplant's bits per byte over the original's on the chunks;
* ``covered``: student positions that get a target, of all positions in chunks;
* ``gap``: on those positions, (log q - log p_student) of the actual pieces: what a student
  that matched the targets exactly would gain there;
* on chunks whose every piece has a target: the teacher's own log-likelihood of the chunk
  (``LT``), the product of the piece targets (``q``) and the student's (``LS``). ``q`` close
  to ``LT`` says the targets carry the teacher's likelihood in the student's pieces.

    python bench/piece_targets.py TRANSPLANT [--teacher DIR] [--chars 1500] [--k 32]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assets  # noqa: E402  (sibling module: bench/ is not a package)

from mergekit_tokenplug.heal.align import align_chunks, encode_segments  # noqa: E402
from mergekit_tokenplug.heal.pieces import chunk_targets, spellings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transplant", type=Path)
    ap.add_argument("--teacher", type=Path, default=assets.cache_root() / "models/gemma3-270m")
    ap.add_argument("--texts", default="prose-tune")
    ap.add_argument("--chars", type=int, default=1500)
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args()
    tt = transformers.AutoTokenizer.from_pretrained(args.teacher)
    st = transformers.AutoTokenizer.from_pretrained(args.transplant)
    load = transformers.AutoModelForCausalLM.from_pretrained
    teacher = load(args.teacher, dtype=torch.float32).eval()
    student = load(args.transplant, dtype=torch.float32).eval()
    spell = spellings(tt, st, teacher.get_output_embeddings().weight.shape[0])
    bits = 1 / math.log(2)
    print("| text | cost | covered | gap | full chunks: LT | q | LS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in assets.PROSE_SOURCES:
        text = assets.prose_path(args.texts, name).read_text(encoding="utf-8")[: args.chars]
        n_bytes = len(text.encode())
        s_ids, s_sp = encode_segments(st, [(0, text)], bos=st.bos_token_id, sep=None)
        t_ids, t_sp = encode_segments(tt, [(0, text)], bos=tt.bos_token_id, sep=None)
        chunks = align_chunks(s_sp, t_sp)
        with torch.no_grad():
            slp = student(input_ids=torch.tensor([s_ids])).logits[0].float().log_softmax(-1)
            tlp = teacher(input_ids=torch.tensor([t_ids])).logits[0].float().log_softmax(-1)
        covered = positions = 0
        gap = lt = lq = ls = cost = 0.0
        for a_lo, a_hi, b_lo, b_hi in zip(
            *map(list, (chunks.a_lo, chunks.a_hi, chunks.b_lo, chunks.b_hi)), strict=True
        ):
            actual = s_ids[a_lo:a_hi]
            positions += len(actual)
            targets = chunk_targets(tlp[b_lo - 1], spell, actual, args.k)
            q_chunk = 0.0
            for j, ids, prob, _ in targets:
                q = math.log(float(prob[ids == actual[j]].sum()))
                gap += q - float(slp[a_lo - 1 + j, actual[j]])
                q_chunk += q
            covered += len(targets)
            chunk_t = sum(float(tlp[b - 1, t_ids[b]]) for b in range(b_lo, b_hi))
            chunk_s = sum(float(slp[a - 1, s_ids[a]]) for a in range(a_lo, a_hi))
            cost += chunk_t - chunk_s
            if len(targets) == len(actual):
                lt += chunk_t
                ls += chunk_s
                lq += q_chunk
        print(
            f"| {name} | {cost * bits / n_bytes:.3f} | {covered}/{positions} | {gap * bits / n_bytes:.3f} | "
            f"{lt * bits / n_bytes:.3f} | {lq * bits / n_bytes:.3f} | {ls * bits / n_bytes:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
