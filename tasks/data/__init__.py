"""Readers of the real data-set formats and the official image transforms.

One reader per file: ``karpathy`` (COCO/Flickr30K Karpathy splits), ``vqa`` (VQAv2), ``nlvr2``,
``imagenet`` and ``pretraining`` (WebDataset shards, image folders, text corpora); ``transforms``
holds the official image transforms. Readers return raw items (PIL images or ``transform`` outputs,
text, targets, ids); bad input raises :class:`DataError` naming the file and record.

Names are imported lazily (timm, torchvision and webdataset take seconds to import).
"""

from importlib import import_module

_EXPORTS = {
    "DataError": "images",
    "load_image": "images",
    "ImageNetFolder": "imagenet",
    "ImageNetIndex": "imagenet",
    "KarpathyCaptions": "karpathy",
    "gt_captions": "karpathy",
    "NLVR2": "nlvr2",
    "ImageFolderSource": "pretraining",
    "ImageTextShards": "pretraining",
    "TextCorpus": "pretraining",
    "RandomAugment": "transforms",
    "build_imagenet_transform": "transforms",
    "build_vl_transform": "transforms",
    "VQAv2": "vqa",
    "build_answer_vocab": "vqa",
    "rest_val_split": "vqa",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tasks.data' has no attribute {name!r}")
    return getattr(import_module(f"tasks.data.{_EXPORTS[name]}"), name)
