"""llmclf: fine-tune a pretrained decoder language model into a text classifier (chapter 6 of
"Build a Large Language Model from Scratch", as a tool and a library)."""

from .version import __version__  # noqa: E402,F401

from .classifier import TextClassifier, count_parameters, set_trainable  # noqa: E402
from .data import (ClassificationDataset, SpamDataset, create_balanced_dataset, load_sms_spam,  # noqa: E402
                   prepare_data, random_split, read_table)
from .errors import LlmclfError  # noqa: E402
from .metrics import (calc_accuracy_loader, calc_loss_batch, calc_loss_loader, classification_metrics,  # noqa: E402
                      plot_values)
from .models import GPTConfig, GPTModel, LlamaConfig, LlamaModel, MODELS  # noqa: E402
from .predict import Classifier, classify, classify_review, load_classifier, predict_texts  # noqa: E402
from .train import TrainState, compute_prefix_cache, make_loaders, train_classifier_simple  # noqa: E402
from . import book  # noqa: E402  (chapter 6's functions with the book's signatures: llmclf.book)

__all__ = [
    "ClassificationDataset", "Classifier", "GPTConfig", "GPTModel", "LlamaConfig", "LlamaModel", "LlmclfError",
    "MODELS", "SpamDataset", "TextClassifier", "TrainState", "book", "calc_accuracy_loader", "calc_loss_batch",
    "calc_loss_loader", "classification_metrics", "classify", "classify_review", "compute_prefix_cache",
    "count_parameters", "create_balanced_dataset", "load_classifier", "load_sms_spam", "make_loaders",
    "plot_values", "predict_texts", "prepare_data", "random_split", "read_table", "set_trainable",
    "train_classifier_simple",
]
