"""``tasks.metrics.retrieval.retrieval_recalls`` as it was before per-item ranks (commit e7694b8):
the reference the per-item aggregates are checked against in test_per_item_results.py. Frozen; do
not edit.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from tasks.metrics._checks import check_not_empty


def dedup_image_features(image_feats: torch.Tensor, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per ``image_id`` (first occurrence), sorted by id: ``(features, ids)``."""
    image_ids = torch.as_tensor(image_ids)
    if image_ids.dim() != 1 or image_ids.shape[0] != image_feats.shape[0]:
        raise ValueError(f"image_ids must be 1-d with one id per feature row ({image_feats.shape[0]}), "
                         f"got shape {tuple(image_ids.shape)}")
    first_row: dict[int, int] = {}
    for row, image_id in enumerate(image_ids.tolist()):
        first_row.setdefault(int(image_id), row)
    ids = sorted(first_row)
    rows = torch.tensor([first_row[i] for i in ids], dtype=torch.long, device=image_feats.device)
    return image_feats.index_select(0, rows), torch.tensor(ids, dtype=torch.long)


def _top_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best rows of every column ordered by (score desc, row asc), as a stable sort would give.

    ``topk`` is fast but picks arbitrary members of a tie at the k-th value; columns where that
    matters (more rows equal the k-th value than were picked) are redone with a full stable sort.
    """
    values, rows = scores.topk(k, dim=0)
    rows, by_row = rows.sort(dim=0)
    values = values.gather(0, by_row)
    values, by_value = values.sort(dim=0, descending=True, stable=True)
    rows = rows.gather(0, by_value)
    kth = values[-1:]
    straddling = ((scores == kth).sum(dim=0) > (values == kth).sum(dim=0)).nonzero().flatten()
    if straddling.numel():
        full_values, full_rows = torch.sort(scores[:, straddling], dim=0, descending=True, stable=True)
        values[:, straddling] = full_values[:k]
        rows[:, straddling] = full_rows[:k]
    return values, rows


def retrieval_recalls(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    text_to_image: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 512,
    split: str = "eval",
) -> dict[str, float]:
    """Retrieval recalls ``tr_r{k}``, ``ir_r{k}`` and ``average_score`` (percent).

    Args:
        image_feats: (N, D) image features, one row per image or per (image, caption) row.
        text_feats: (T, D) caption features.
        text_to_image: (T,) the ``image_id`` of each caption.
        image_ids: (N,) the ``image_id`` of each image row; rows sharing an id are de-duplicated.
            ``None`` means the rows are images ``0..N-1``.
        ks: the cut-offs.
        chunk_size: images per similarity chunk (memory ~ chunk_size x T floats, a few times over).
        split: the split's name, used in error messages.

    Raises:
        ValueError: shape mismatch, a caption whose image is not among the images (named), or an
            image without any caption (named).
        EmptySplitError: no images or no captions.
    """
    check_not_empty(image_feats.shape[0], split, "images")
    check_not_empty(text_feats.shape[0], split, "captions")
    if image_feats.dim() != 2 or text_feats.dim() != 2 or image_feats.shape[1] != text_feats.shape[1]:
        raise ValueError(f"features must be (N, D) and (T, D) with the same D, got {tuple(image_feats.shape)} "
                         f"and {tuple(text_feats.shape)}")
    if chunk_size < 1 or not ks or min(ks) < 1:
        raise ValueError(f"need chunk_size >= 1 and cut-offs >= 1, got chunk_size={chunk_size}, ks={tuple(ks)}")
    text_to_image = torch.as_tensor(text_to_image).long()
    if text_to_image.shape != (text_feats.shape[0],):
        raise ValueError(f"text_to_image must hold one image id per caption ({text_feats.shape[0]}), "
                         f"got shape {tuple(text_to_image.shape)}")
    if image_ids is None:
        ids = torch.arange(image_feats.shape[0])
    else:
        image_feats, ids = dedup_image_features(image_feats, image_ids)

    # Row of each caption's image in the de-duplicated image table.
    row_of_id = {int(i): row for row, i in enumerate(ids.tolist())}
    caption_rows = []
    for caption, image_id in enumerate(text_to_image.tolist()):
        if image_id not in row_of_id:
            raise ValueError(f"split {split!r}: caption {caption} belongs to image_id {image_id}, which is not "
                             "among the images")
        caption_rows.append(row_of_id[image_id])
    device = image_feats.device
    caption_rows = torch.tensor(caption_rows, dtype=torch.long, device=device)
    num_images, num_texts = image_feats.shape[0], text_feats.shape[0]
    captions_per_image = torch.bincount(caption_rows, minlength=num_images)
    if (captions_per_image == 0).any():
        lonely = ids[(captions_per_image == 0).cpu()].tolist()
        raise ValueError(f"split {split!r}: image_id(s) {lonely[:10]} have no caption; text retrieval needs at "
                         "least one caption per image")

    # Captions of each image row, ascending, padded with the sentinel num_texts.
    by_row = torch.argsort(caption_rows, stable=True)
    first_slot = torch.cumsum(captions_per_image, 0) - captions_per_image
    slot = torch.arange(num_texts, device=device) - first_slot[caption_rows[by_row]]
    positives = torch.full((num_images, int(captions_per_image.max())), num_texts, dtype=torch.long, device=device)
    positives[caption_rows[by_row], slot] = by_row

    image_feats = image_feats.float()
    text_t = text_feats.float().to(device).t()
    top = max(ks)
    keep = min(top, num_images)
    columns = torch.arange(num_texts, device=device).unsqueeze(0)
    tr_best_rank = torch.empty(num_images, dtype=torch.long, device=device)
    run_scores = torch.empty(0, num_texts, device=device)
    run_rows = torch.empty(0, num_texts, dtype=torch.long, device=device)
    for start in range(0, num_images, chunk_size):
        scores = image_feats[start:start + chunk_size] @ text_t  # (c, T): the one product of this chunk

        # TR: rank of each image's best-ranked caption (highest score, then lowest index) among all.
        own = positives[start:start + scores.shape[0]]
        own_scores = scores.gather(1, own.clamp(max=num_texts - 1)).masked_fill(own == num_texts, float("-inf"))
        best_score = own_scores.max(dim=1, keepdim=True).values
        best_col = torch.where(own_scores == best_score, own, num_texts).min(dim=1, keepdim=True).values
        rank = (scores > best_score).sum(dim=1)
        tied = (scores == best_score).sum(dim=1) > 1  # other captions with exactly the best score
        if tied.any():
            rank[tied] += ((scores[tied] == best_score[tied]) & (columns < best_col[tied])).sum(dim=1)
        tr_best_rank[start:start + scores.shape[0]] = rank

        # IR: running top-k images per caption, ordered by (score desc, row asc). The running rows all
        # precede this chunk's, so a stable sort of [running; chunk] keeps that order on ties.
        chunk_scores, chunk_rows = _top_rows(scores, min(keep, scores.shape[0]))
        merged_scores = torch.cat([run_scores, chunk_scores])
        merged_rows = torch.cat([run_rows, chunk_rows + start])
        merged_scores, order = torch.sort(merged_scores, dim=0, descending=True, stable=True)
        run_scores = merged_scores[:keep]
        run_rows = merged_rows.gather(0, order[:keep])
        del scores, chunk_scores, chunk_rows, order

    hit_rank = (run_rows == caption_rows.unsqueeze(0)).float().argmax(dim=0)
    found = (run_rows == caption_rows.unsqueeze(0)).any(dim=0)
    ir_rank = torch.where(found, hit_rank, torch.full_like(hit_rank, num_images))
    result = {}
    for k in ks:
        result[f"tr_r{k}"] = 100.0 * (tr_best_rank < k).float().mean().item()
    for k in ks:
        result[f"ir_r{k}"] = 100.0 * (ir_rank < k).float().mean().item()
    result["average_score"] = sum(result.values()) / len(result)
    return result
