"""Load an auxiliary sentence-embedding model (for TokenAdapt) from a local directory.

The result is a plain ``embed_texts(list[str]) -> (n, e)`` function returning L2-normalized,
attention-mask mean-pooled last hidden states, which the seam hands to the method kernel.
Only local safetensors checkpoints of text encoders are accepted (no hub, no remote code, no
pickles); bad directories fail with a one-line :class:`InputError` naming the recipe key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mergekit_tokenplug.errors import InputError
from mergekit_tokenplug.vocab.texts import display_text

KEY = "tokenizer.approximation.embedder"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)
_MAX_LENGTH = 512  # token texts are short; this only bounds pathological inputs

_MODELS: dict[tuple[str, str], tuple[object, object]] = {}
_FUNCS: dict[tuple[str, str, int, bool], Callable[[list[str]], torch.Tensor]] = {}
_LOCK = threading.Lock()


def _fail(path: str, what: str) -> InputError:
    return InputError(f"{path!r} {what}", where=KEY)


def check_embedder_dir(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise _fail(path, "does not exist; expected a sentence-embedding model directory")
    if not p.is_dir():
        raise _fail(path, "is not a directory; expected a sentence-embedding model directory")
    if not (p / "config.json").is_file():
        raise _fail(path, "has no config.json; expected a sentence-embedding model directory")
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        raise _fail(path, "has no tokenizer (tokenizer.json / vocab.txt / tokenizer_config.json)")
    if not any(p.glob("*.safetensors")):
        raise _fail(path, "has no *.safetensors weights (other weight formats are not loaded)")
    return p


def _load(p: Path, device: str) -> tuple[object, object]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = str(p)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise _fail(path, f"has an unreadable config.json ({type(exc).__name__}: {exc})") from None
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) or any(
        a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs
    ):
        raise _fail(
            path,
            f"holds a causal language model ({getattr(config, 'model_type', '?')}), not a text encoder; expected a sentence-embedding model such as all-MiniLM-L6-v2",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        raise _fail(path, f"has no loadable tokenizer ({type(exc).__name__}: {exc})") from None
    try:
        model = AutoModel.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except Exception as exc:
        raise _fail(
            path, f"could not be loaded as a text encoder ({type(exc).__name__}: {exc})"
        ) from None
    model.eval().to(device)
    return model, tokenizer


def load_text_embedder(
    path: str, device: str | torch.device = "cpu", batch_size: int = 256, show_progress: bool = True
) -> Callable[[list[str]], torch.Tensor]:
    """An ``embed_texts`` function backed by the model in ``path`` (cached per path and device).

    Vectors are float32 on ``device``: mean of the last hidden state over the attention mask,
    L2-normalized. Texts are embedded in batches sorted by length (less padding).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    p = check_embedder_dir(path)
    dev = str(torch.device(device))
    real = os.path.realpath(p)
    with _LOCK:
        fkey = (real, dev, batch_size, show_progress)
        if fkey in _FUNCS:
            return _FUNCS[fkey]
        if (real, dev) not in _MODELS:
            _MODELS[(real, dev)] = _load(p, dev)
        model, tokenizer = _MODELS[(real, dev)]
    max_len = min(
        _MAX_LENGTH,
        int(getattr(tokenizer, "model_max_length", _MAX_LENGTH) or _MAX_LENGTH),
        int(getattr(model.config, "max_position_embeddings", None) or _MAX_LENGTH),
    )
    hidden = int(model.config.hidden_size)

    def embed_texts(texts: list[str]) -> torch.Tensor:
        texts = [display_text(t) for t in texts]  # raw bytes (lone surrogates) -> U+FFFD
        out = torch.empty(len(texts), hidden, dtype=torch.float32, device=dev)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(texts), batch_size)
        bar = tqdm(
            starts,
            desc="embedding texts",
            unit="batch",
            disable=not show_progress or len(starts) < 8,
        )
        with torch.inference_mode():
            for s in bar:
                idx = order[s : s + batch_size]
                enc = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                ).to(dev)
                states = model(**enc).last_hidden_state.to(torch.float32)
                mask = enc["attention_mask"].unsqueeze(-1).to(torch.float32)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
                pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
                out[torch.tensor(idx, dtype=torch.long, device=dev)] = pooled
        return out

    with _LOCK:
        return _FUNCS.setdefault(fkey, embed_texts)
