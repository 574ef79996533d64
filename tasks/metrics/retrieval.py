"""Image-text retrieval recalls (COCO 5k / Flickr30K 1k), as the official ``RetrievalHandler``.

Images are de-duplicated by ``image_id`` (first occurrence kept, then sorted by id) and scored
against every caption with the dot product of the (normalised) features:

- TR@k (image -> text): an image is a hit if *any* of its captions is among its k best captions;
- IR@k (text -> image): a caption is a hit if its image is among its k best images;
- ``average_score``: the mean of the six recalls, which picks the best checkpoint.

Values are in percent. :func:`retrieval_ranks` gives the rank of the true match of every query (the
per-item results); the recalls are the shares of ranks below k. The similarity matrix is computed in
chunks of ``chunk_size`` images, so 5k images x 25k captions never materialise at once. Ties are
broken by index (the earlier caption or image ranks first, as a stable descending sort would), which
makes the result deterministic and independent of ``chunk_size``; the official ``topk`` leaves tie
order open.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tasks.metrics._checks import check_not_empty

__all__ = ["RetrievalRanks", "dedup_image_features", "recalls_from_ranks", "retrieval_ranks", "retrieval_recalls"]


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


@dataclass(frozen=True)
class RetrievalRanks:
    """Where the true match of every query ranks (0-based, ties broken by index) and what ranks first.

    Args:
        image_ids: (N,) the images, de-duplicated and sorted by id (rows of the ``image_*`` fields).
        image_rank: (N,) rank of each image's best-ranked caption among all captions (text retrieval).
        image_top1: (N,) the caption (index) each image ranks first.
        text_image_row: (T,) the row of each caption's image.
        text_rank: (T,) rank of each caption's image among all images (image retrieval).
        text_top1: (T,) the image row each caption ranks first.
    """

    image_ids: torch.Tensor
    image_rank: torch.Tensor
    image_top1: torch.Tensor
    text_image_row: torch.Tensor
    text_rank: torch.Tensor
    text_top1: torch.Tensor


def retrieval_ranks(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    text_to_image: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    *,
    chunk_size: int = 512,
    split: str = "eval",
) -> RetrievalRanks:
    """The rank of the true match of every image query (its best-ranked caption) and every caption
    query (its image), from the dot products of the features; arguments as :func:`retrieval_recalls`.

    The similarity is computed in chunks of images, twice over (first the captions' own scores, then
    the count of images ahead of them), so memory stays at a chunk x captions matrix.
    """
    check_not_empty(image_feats.shape[0], split, "images")
    check_not_empty(text_feats.shape[0], split, "captions")
    if image_feats.dim() != 2 or text_feats.dim() != 2 or image_feats.shape[1] != text_feats.shape[1]:
        raise ValueError(f"features must be (N, D) and (T, D) with the same D, got {tuple(image_feats.shape)} "
                         f"and {tuple(text_feats.shape)}")
    if chunk_size < 1:
        raise ValueError(f"need chunk_size >= 1, got chunk_size={chunk_size}")
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
    columns = torch.arange(num_texts, device=device).unsqueeze(0)
    image_rank = torch.empty(num_images, dtype=torch.long, device=device)
    image_top1 = torch.empty(num_images, dtype=torch.long, device=device)
    own_score = torch.empty(num_texts, device=device)
    text_top1 = torch.zeros(num_texts, dtype=torch.long, device=device)
    best_text_score = torch.full((num_texts,), float("-inf"), device=device)
    chunks = range(0, num_images, chunk_size)
    for start in chunks:
        scores = image_feats[start:start + chunk_size] @ text_t  # (c, T)
        rows = torch.arange(start, start + scores.shape[0], device=device)

        # Image query: rank of its best-ranked caption (highest score, then lowest index) among all.
        own = positives[start:start + scores.shape[0]]
        own_scores = scores.gather(1, own.clamp(max=num_texts - 1)).masked_fill(own == num_texts, float("-inf"))
        best_score = own_scores.max(dim=1, keepdim=True).values
        best_col = torch.where(own_scores == best_score, own, num_texts).min(dim=1, keepdim=True).values
        rank = (scores > best_score).sum(dim=1)
        tied = (scores == best_score).sum(dim=1) > 1  # other captions with exactly the best score
        if tied.any():
            rank[tied] += ((scores[tied] == best_score[tied]) & (columns < best_col[tied])).sum(dim=1)
        image_rank[rows] = rank
        image_top1[rows] = scores.argmax(dim=1)  # the first of equal maxima

        # Caption queries: their own image's score (from this very product) and the running best image,
        # an earlier row winning ties.
        mine = ((caption_rows >= start) & (caption_rows < start + scores.shape[0])).nonzero().flatten()
        own_score[mine] = scores[caption_rows[mine] - start, mine]
        chunk_best, chunk_row = scores.max(dim=0)
        better = chunk_best > best_text_score
        best_text_score = torch.where(better, chunk_best, best_text_score)
        text_top1 = torch.where(better, chunk_row + start, text_top1)
    text_rank = torch.zeros(num_texts, dtype=torch.long, device=device)
    for start in chunks:
        scores = image_feats[start:start + chunk_size] @ text_t  # the same product as above, recomputed
        rows = torch.arange(start, start + scores.shape[0], device=device).unsqueeze(1)
        ahead = (scores > own_score) | ((scores == own_score) & (rows < caption_rows))
        text_rank += ahead.sum(dim=0)
    return RetrievalRanks(ids, image_rank.cpu(), image_top1.cpu(), caption_rows.cpu(), text_rank.cpu(),
                          text_top1.cpu())


def recalls_from_ranks(ranks: RetrievalRanks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``tr_r{k}`` (image queries), ``ir_r{k}`` (caption queries) and ``average_score``, in percent."""
    result = {}
    for k in ks:
        result[f"tr_r{k}"] = 100.0 * (ranks.image_rank < k).float().mean().item()
    for k in ks:
        result[f"ir_r{k}"] = 100.0 * (ranks.text_rank < k).float().mean().item()
    result["average_score"] = sum(result.values()) / len(result)
    return result


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
    if not ks or min(ks) < 1:
        raise ValueError(f"need cut-offs >= 1, got ks={tuple(ks)}")
    ranks = retrieval_ranks(image_feats, text_feats, text_to_image, image_ids, chunk_size=chunk_size, split=split)
    return recalls_from_ranks(ranks, ks)
