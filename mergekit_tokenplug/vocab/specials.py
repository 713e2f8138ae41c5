"""The special-token table: for every special output token, where its row comes from.

Role tokens, chat markers and other added tokens are where a transplant goes wrong quietly
(a document separator copied from an untrained ``<unk>`` row); the table shows each one
(token -> row source) in ``plan``, the model card and the manifest. Tokens copied from the
identical token are counted, not listed, when there are many (Gemma has thousands of
``<unusedN>`` placeholders).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mergekit_tokenplug.vocab.canonical import ROLES

LISTED_SAME = 32  # identical-token copies listed one by one up to this many


def special_table(
    out_tok: Any, alignment: Any, model_tok: Any, estimated_by: dict[int, str]
) -> dict[str, Any]:
    """``{"rows": [{"token", "id", "roles", "source"}], "same_token": n, "other_added": m}``
    for one model: role tokens and special added tokens listed (``same_token`` counts the
    identical-token copies not listed), other added tokens counted (``other_added``).

    ``estimated_by`` maps an estimated output id to the method (and space) that estimates it.
    """
    out_tokens = {i: t for t, i in out_tok.get_vocab().items()}
    model_tokens = {i: t for t, i in model_tok.get_vocab().items()}
    roles_of: dict[int, list[str]] = {}
    for role in ROLES:
        token = getattr(out_tok, f"{role}_token", None)
        i = out_tok.get_vocab().get(str(token)) if token is not None else None
        if i is not None:
            roles_of.setdefault(i, []).append(role)
    decoder = getattr(out_tok, "added_tokens_decoder", {}) or {}
    marked = {i for i, t in decoder.items() if t.special} | set(roles_of)
    # non-special added tokens (a union's other vocabularies, recipe tokens) are counted only
    how = {i: h for i, h in alignment.special_how.items() if i in marked}
    same = [i for i, h in how.items() if h == "same token" and i not in roles_of]
    listed = [i for i in sorted(how) if i not in same or len(same) <= LISTED_SAME]
    rows = []
    for i in listed:
        src = int(alignment.src_ids[i]) if i < len(alignment.src_ids) else -1
        if src >= 0:
            source = f"row {src} `{model_tokens.get(src, '?')}` ({how[i]})"
        else:
            source = f"estimated by {estimated_by.get(i, '?')} ({how[i]})"
        rows.append(
            {
                "token": out_tokens.get(i, ""),
                "id": i,
                "roles": roles_of.get(i, []),
                "source": source,
            }
        )
    return {
        "rows": rows,
        "same_token": len(same) if len(same) > LISTED_SAME else 0,
        "other_added": len(alignment.special_how) - len(how),
    }


def estimated_by(groups: list[Any]) -> dict[int, str]:
    """Output id -> "method <- space" from a fill plan's groups."""
    out: dict[int, str] = {}
    for g in groups:
        space = getattr(g.source, "name", g.source) if g.source is not None else None
        label = g.method + (f" <- {space}" if space else "")
        out.update({int(i): label for i in np.asarray(g.out_ids).tolist()})
    return out


def table_markdown(model: str, table: dict[str, Any]) -> list[str]:
    lines = [
        f"Special tokens of {model} (token -> row):",
        "",
        "| token | id | roles | row |",
        "|---|---:|---|---|",
    ]
    for r in table["rows"]:
        token = r["token"].replace("|", "\\|")
        lines.append(f"| `{token}` | {r['id']} | {', '.join(r['roles']) or '-'} | {r['source']} |")
    if table.get("same_token"):
        lines.append(f"| ({table['same_token']} more) | | | copied from the same token |")
    return [*lines, ""]
