"""``mergekit-tokenplug gguf OUT FILE.gguf --converter convert_hf_to_gguf.py``.

llama.cpp's converter refuses an output whose tokenizer adds BOS where its source's does not
(see output/gguf.py); this command runs it on a staged view of OUT that it accepts, with the
BOS convention carried into the GGUF's ``tokenizer.ggml.add_bos_token``.
"""

from __future__ import annotations

import click


@click.command("gguf")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.argument("outfile", type=click.Path(dir_okay=False))
@click.option(
    "--converter",
    required=True,
    type=click.Path(dir_okay=False),
    help="llama.cpp's convert_hf_to_gguf.py (with its conversion/ and gguf-py/ beside it, as "
    "in the llama.cpp sources or the llama-cpp-python sdist's vendor/llama.cpp).",
)
@click.option(
    "--outtype",
    default="f16",
    show_default=True,
    type=click.Choice(["f32", "f16", "bf16", "q8_0", "auto"]),
)
def gguf(out: str, outfile: str, converter: str, outtype: str) -> None:
    """Convert the checkpoint OUT to OUTFILE (GGUF) with llama.cpp's own converter."""
    from mergekit_tokenplug.output.gguf import convert  # lazy: keeps the CLI's start-up fast

    proc = convert(out, converter, outfile, outtype)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise click.ClickException(f"{converter}: the converter failed: {tail[0]}")
    click.echo(f"wrote {outfile}")
