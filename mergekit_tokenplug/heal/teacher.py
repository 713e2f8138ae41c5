"""The teacher of a distillation heal: which model it is, whether it may teach, and its cache.

The teacher is the transplant's original model: it reads the same bytes through its own
tokenizer and shares every transformer weight with the model being healed, which is why its
hidden states can be matched without a projection. Anything else is refused before work
starts (another width or architecture, no tokenizer, a body that differs from MODEL's).

The teacher runs once: one no-gradient pass over the training windows heal will use writes,
per window, the aligned chunks (``heal/align.py``), the teacher's summed log-probability of
each chunk, its hidden state at each chunk end, and the next-piece targets of the student's
positions inside each chunk's first teacher token (``heal/pieces.py``: the teacher's
``PIECE_TOP`` likeliest tokens at the chunk start, read as student pieces; written whatever
the loss weights, so one cache serves every objective). The files live in a cache directory
keyed by the teacher's weights, both tokenizers, the corpus and the window settings, one file
per window (written atomically), so a rerun (or a longer run) only computes windows it lacks
and a changed corpus lands in another key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.heal.align import Chunks, align_chunks
from mergekit_tokenplug.heal.corpus_spans import Stream, Windows, read_stream
from mergekit_tokenplug.heal.pieces import chunk_targets, spellings
from mergekit_tokenplug.inputs import check_model_dir
from mergekit_tokenplug.output.manifest import MANIFEST_NAME, input_record, sha256_file

WHERE = "--teacher"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
CACHE_FORMAT = 2
PIECE_TOP = 32  # teacher tokens per chunk start kept for the next-piece targets


def default_teacher(model_dir: Path) -> str | None:
    """The base model MODEL's manifest records for its transplant (first ``model`` input of a
    manifest that also has a donor), when that directory is still there; else None."""
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        inputs = manifest.get("inputs") or []
        if not any(i.get("role") == "donor" for i in inputs):
            inputs = (manifest.get("transplant") or {}).get("inputs") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    if not any(isinstance(i, dict) and i.get("role") == "donor" for i in inputs):
        return None
    base = next((i.get("path") for i in inputs if i.get("role") == "model"), None)
    return base if base and (Path(base) / "config.json").is_file() else None


def _weights(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def _vocab_tensor(name: str) -> bool:
    return "embed_tokens" in name or name.split(".")[0] == "lm_head"


def check_teacher(teacher: str, model_dir: Path) -> None:
    """Refuse a teacher that cannot teach MODEL: no tokenizer, no safetensors weights,
    another architecture or width, or transformer weights that differ from MODEL's (compared
    in MODEL's dtype, so a bf16 transplant of an fp32 base still matches)."""
    check_model_dir(teacher, where=WHERE, need_tokenizer=True)
    t = Path(teacher)
    if not (t / "config.json").is_file():
        raise InputError(f"{teacher} has no config.json; expected a model directory", where=WHERE)
    t_cfg = json.loads((t / "config.json").read_text(encoding="utf-8"))
    m_cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    t_text, m_text = t_cfg.get("text_config", t_cfg), m_cfg.get("text_config", m_cfg)
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        if t_text.get(key) != m_text.get(key):
            raise InputError(
                f"{teacher} has {key} {t_text.get(key)!r}, MODEL has {m_text.get(key)!r}; "
                "expected MODEL's original (the transplant's base model)",
                where=WHERE,
            )
    t_files, m_files = _weights(t), _weights(model_dir)
    if not t_files:
        raise InputError(f"{teacher} has no .safetensors weights", where=WHERE)
    m_index = {}
    for f in m_files:
        with safe_open(str(f), "pt") as fh:
            m_index.update({k: f for k in fh.keys() if not _vocab_tensor(k)})
    seen = 0
    for f in t_files:
        with safe_open(str(f), "pt") as fh:
            for name in fh.keys():
                if _vocab_tensor(name):
                    continue
                if name not in m_index:
                    raise InputError(
                        f"{teacher} has tensor {name}, which MODEL lacks; expected MODEL's "
                        "original (the transplant's base model)",
                        where=WHERE,
                    )
                with safe_open(str(m_index[name]), "pt") as mh:
                    mine = mh.get_tensor(name)
                theirs = fh.get_tensor(name).to(mine.dtype)
                if theirs.shape != mine.shape or not torch.equal(theirs, mine):
                    raise InputError(
                        f"{teacher} is not MODEL's base: tensor {name} differs; expected the "
                        "model the transplant started from",
                        where=WHERE,
                    )
                seen += 1
    if seen != len(m_index):
        raise InputError(
            f"{teacher} lacks {len(m_index) - seen} of MODEL's transformer tensors; expected "
            "MODEL's original (the transplant's base model)",
            where=WHERE,
        )


def _files_digest(path: Path, names: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in names:
        if (path / name).is_file():
            h.update(name.encode() + b"\0" + sha256_file(path / name).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TeacherKey:
    """What the cache depends on, and its digest (the cache directory's name)."""

    teacher: dict[str, Any]  # input_record: path and sha256 of each weight file
    fields: dict[str, Any]

    @property
    def digest(self) -> str:
        blob = json.dumps(
            {"teacher": self.teacher["safetensors"], **self.fields}, sort_keys=True
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


def teacher_key(
    teacher: str, model_dir: Path, corpus_sha: dict[str, str], settings: dict[str, Any]
) -> TeacherKey:
    fields = {
        "format": CACHE_FORMAT,
        "teacher_tokenizer": _files_digest(Path(teacher), TOKENIZER_FILES),
        "tokenizer": _files_digest(model_dir, TOKENIZER_FILES),
        "corpus": list(corpus_sha.values()),
        **settings,
    }
    return TeacherKey(input_record(teacher), fields)


@dataclass
class WindowTarget:
    """What the losses need of one window: student chunk ranges, teacher chunk log-probs,
    teacher hidden states at chunk ends."""

    lo: torch.Tensor  # (n,) long: first student token of each chunk
    hi: torch.Tensor  # (n,) long: one past its last token
    logp: torch.Tensor  # (n,) float32
    hidden: torch.Tensor  # (n, d) float32
    piece_pos: torch.Tensor  # (m,) long: student positions whose next token has a target
    piece_ids: torch.Tensor  # (m, PIECE_TOP) long: student tokens of the target (0 padded)
    piece_prob: torch.Tensor  # (m, PIECE_TOP) float32: their teacher mass (0 padded)
    piece_other: torch.Tensor  # (m,) float32: the teacher's mass on every other token


def window_file(cache: Path, index: int) -> Path:
    return cache / f"w{index:06d}.safetensors"


def window_chunks(t_stream: Stream, windows: Windows, index: int) -> tuple[list[int], Chunks]:
    """The teacher's ids for window ``index`` and the chunks both read; a chunk's first
    token on each side has a token before it (a prediction to sum)."""
    _, s_spans, start, end = windows.window(index)
    t_ids, t_spans = t_stream.between(start, end)
    chunks = align_chunks(  # a side without BOS starts where its first token does
        s_spans,
        t_spans,
        None if windows.stream.bos is not None else start,
        None if t_stream.bos is not None or not t_spans else t_spans[0][0],
    )
    keep = [k for k in range(len(chunks)) if chunks.a_lo[k] >= 1 and chunks.b_lo[k] >= 1]
    pick = [[getattr(chunks, f)[k] for k in keep] for f in ("a_lo", "a_hi", "b_lo", "b_hi")]
    return t_ids, Chunks(*pick)


def piece_records(
    t_logits: torch.Tensor, s_ids: list[int], chunks: Chunks, spell: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The next-piece targets of a window from the teacher's logits (T_t, V_t) at its own
    positions: one row per student position that gets a target, padded to ``PIECE_TOP``."""
    pos: list[int] = []
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    other: list[float] = []
    starts = torch.tensor(chunks.b_lo, dtype=torch.long) - 1
    logp = t_logits[starts.to(t_logits.device)].float().log_softmax(-1).cpu()
    for k in range(len(chunks)):
        actual = s_ids[chunks.a_lo[k] : chunks.a_hi[k]]
        for j, ids, prob, rest in chunk_targets(logp[k], spell, actual, PIECE_TOP):
            pos.append(chunks.a_lo[k] - 1 + j)
            rows.append((ids, prob))
            other.append(rest)
    ids_out = torch.zeros((len(pos), PIECE_TOP), dtype=torch.long)
    prob_out = torch.zeros((len(pos), PIECE_TOP), dtype=torch.float32)
    for r, (ids, prob) in enumerate(rows):
        ids_out[r, : len(ids)] = ids
        prob_out[r, : len(ids)] = prob
    return {
        "piece_pos": torch.tensor(pos, dtype=torch.long),
        "piece_ids": ids_out,
        "piece_prob": prob_out,
        "piece_other": torch.tensor(other, dtype=torch.float32),
    }


@torch.no_grad()
def teacher_window(
    teacher: Any,
    t_stream: Stream,
    windows: Windows,
    index: int,
    layer: int,
    device: Any,
    spell: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Run the teacher once over its reading of window ``index``; keep what the losses
    need at the chunks."""
    t_ids, chunks = window_chunks(t_stream, windows, index)
    out = teacher(input_ids=torch.tensor([t_ids], device=device), output_hidden_states=True)
    logits = out.logits[0, :-1].float()
    target = torch.tensor(t_ids[1:], device=device)
    tok_lp = -torch.nn.functional.cross_entropy(logits, target, reduction="none").double()
    csum = torch.cat([tok_lp.new_zeros(1), tok_lp.cumsum(0)])
    b_lo = torch.tensor(chunks.b_lo, dtype=torch.long)
    b_hi = torch.tensor(chunks.b_hi, dtype=torch.long)
    logp = (csum[b_hi - 1] - csum[b_lo - 1]).float().clamp(max=0.0)
    hidden = out.hidden_states[layer][0, b_hi - 1].float()
    return {
        "lo": torch.tensor(chunks.a_lo, dtype=torch.long),
        "hi": torch.tensor(chunks.a_hi, dtype=torch.long),
        "logp": logp.cpu().contiguous(),
        "hidden": hidden.cpu().contiguous(),
        **piece_records(out.logits[0], windows.window(index)[0], chunks, spell),
    }


def build_cache(
    teacher_dir: str,
    cache: Path,
    student: Windows,
    texts: list[str],
    windows: list[int],
    *,
    layer: int,
    accelerator: Any,
    show_progress: bool,
    student_tokenizer: Any,
) -> int:
    """Compute the missing windows (split over processes); return how many this process ran."""
    import transformers
    from tqdm.auto import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    missing = [w for w in windows if not window_file(cache, w).is_file()]
    accelerator.wait_for_everyone()  # every process splits the same list, before any writes
    mine = missing[accelerator.process_index :: accelerator.num_processes]
    if mine:
        t_tokenizer = transformers.AutoTokenizer.from_pretrained(teacher_dir)
        t_stream = read_stream(t_tokenizer, texts)
        model = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        model.to(accelerator.device).eval()
        spell = spellings(
            t_tokenizer, student_tokenizer, model.get_output_embeddings().weight.shape[0]
        )
        bar = tqdm(
            mine,
            desc="teacher",
            unit="window",
            disable=not (show_progress and accelerator.is_main_process),
        )
        for w in bar:
            rec = teacher_window(model, t_stream, student, w, layer, accelerator.device, spell)
            tmp = window_file(cache, w).with_suffix(f".tmp{os.getpid()}")
            save_file(rec, str(tmp))
            os.replace(tmp, window_file(cache, w))
        del model
    accelerator.wait_for_everyone()
    return len(mine)


def load_targets(cache: Path, windows: list[int]) -> dict[int, WindowTarget]:
    out = {}
    for w in windows:
        t = load_file(str(window_file(cache, w)))
        out[w] = WindowTarget(
            t["lo"], t["hi"], t["logp"], t["hidden"],
            t["piece_pos"], t["piece_ids"], t["piece_prob"], t["piece_other"],
        )  # fmt: skip
    return out


def cache_bytes(cache: Path) -> int:
    return sum(f.stat().st_size for f in cache.glob("w*.safetensors"))
