"""A stored result's runner document rebuilt exactly (for ``requestflow export`` and ``requestflow replay``)."""


from __future__ import annotations

from collections.abc import Iterator

from requestflow.errors import UserError
from requestflow.results.identity import sha256_of


def rebuild(cursor, result_id: int, stored: dict, board: str, document_sha256: str) -> dict:
    """The runner document of result ``result_id``: ``stored`` (``results.document``) with its raw samples and
    per-image predictions put back, as the runner wrote them. Raises UserError unless its hash is
    ``document_sha256``.

    Two things the tables do not keep are recovered: the order of the predictions (the runner writes them in the
    dataset's order, its sorted file names; the rows' physical order, the order they were loaded in, is tried
    next) and the exact scores (the runner rounds them to 6 decimals, ``predictions.scores`` keeps float32: rounding
    the float32 to 6 decimals gives the runner's value back for any score below 8; the float32 itself is tried
    next, for documents written otherwise)."""
    from psycopg import sql

    document = dict(stored)
    if "performance" in stored:
        with cursor.copy(sql.SQL("COPY (SELECT seconds FROM samples WHERE result_id = {} ORDER BY i) TO STDOUT "
                                 "(FORMAT BINARY)").format(sql.Literal(result_id))) as copy:
            copy.set_types(["float8"])
            document["performance"] = {**stored["performance"], "samples": [s for (s,) in copy.rows()]}
    with cursor.copy(sql.SQL("COPY (SELECT image, label, top5, scores FROM predictions WHERE result_id = {} "
                             "ORDER BY ctid) TO STDOUT (FORMAT BINARY)").format(sql.Literal(result_id))) as copy:
        copy.set_types(["text", "int2", "int2[]", "float4[]"])
        loaded_order = list(copy.rows())

    def candidates() -> Iterator[dict]:
        if not loaded_order:
            yield document
            if stored.get("context", {}).get("mode") == "accuracy":
                yield {**document, "predictions": []}
            return
        by_name = sorted(loaded_order, key=lambda row: row[0])
        for order in (by_name, loaded_order) if by_name != loaded_order else (by_name,):
            for score in (lambda s: round(s, 6), float):
                yield {**document, "predictions": [
                    {"file": image, "label": label, "top5": [[c, score(s)] for c, s in zip(top5, scores,
                                                                                         strict=True)]}
                    for image, label, top5, scores in order]}

    for candidate in candidates():
        if sha256_of({"board": board, "document": candidate}) == document_sha256:
            return candidate
    raise UserError(f"result {result_id} (board {board}, started {stored.get('started_at')}, document "
                    f"{document_sha256[:12]}): its runner document cannot be rebuilt exactly from the store (the "
                    f"rebuilt document hashes differently), so it cannot be exported; nothing was written. Leave it "
                    f"out with filters (e.g. --until {stored.get('started_at')})")


