"""Readable column headers: ``Retrieval · HAM10000 · AUROC`` instead of ``retrieval/ham10000/auroc_macro``."""

from __future__ import annotations

METRICS = {
    "auroc_macro": "AUROC",
    "f1_macro": "macro F1",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "ece": "ECE",
    "brier": "Brier",
    "log_loss": "log-loss",
    "dice": "Dice",
    "jaccard": "Jaccard",
    "mean:bleu1": "BLEU-1",
    "mean:bleu2": "BLEU-2",
    "mean:bleu3": "BLEU-3",
    "mean:bleu4": "BLEU-4",
    "mean:meteor": "METEOR",
    "mean:rougeL": "ROUGE-L",
    "mean:rouge1": "ROUGE-1",
    "mean:rouge2": "ROUGE-2",
    "mean:cider": "CIDEr",
    "corpus_bleu4": "corpus BLEU-4",
    "corpus_bleu1": "corpus BLEU-1",
}
DATASETS = {
    "ham10000": "HAM10000",
    "pad_ufes20": "PAD-UFES-20",
    "pad-ufes-20": "PAD-UFES-20",
    "pad_ufes_20": "PAD-UFES-20",
    "dermsynth": "DermSynth",
    "ddi": "DDI",
    "ph2": "PH2",
    "fitzpatrick17k": "Fitzpatrick17k",
    "derm7pt": "Derm7pt",
    "isic2018": "ISIC 2018",
    "isic2019": "ISIC 2019",
    "mednode": "MED-NODE",
    "scin": "SCIN",
    "acne04": "ACNE04",
    "dermamnist": "DermaMNIST",
    "skincap": "SkinCAP",
}


def metric(name: str) -> str:
    if name in METRICS:
        return METRICS[name]
    if name.startswith("mean:"):
        key = name[5:]
        return key.upper() if len(key) <= 6 else key.replace("_", " ")
    return name.replace("_", " ")


def dataset(name: str) -> str:
    return DATASETS.get(name.lower(), name)


def task(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").capitalize()


def column(task_name: str, dataset_name: str, metric_name: str) -> str:
    return f"{task(task_name)} · {dataset(dataset_name)} · {metric(metric_name)}"
